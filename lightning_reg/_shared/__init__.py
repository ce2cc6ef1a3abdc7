"""The shared layer: what every technique package uses, importing nothing else of ours and no Lightning.

* ``validation``: argument validators with one message style;
* ``step_logging``: Lightning's logging rule and the metric writers every callback logs through;
* ``keys``: the metric key names the callbacks log and the report reads;
* ``names``: the one selector syntax for parameter and module names, wrapper prefixes, group names;
* ``verbosity``: the ``verbose`` argument every callback takes.
"""
