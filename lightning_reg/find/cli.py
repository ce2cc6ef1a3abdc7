"""``python -m lightning_reg.find --config my.yaml``: the finder on a LightningCLI config.

The config is the one a LightningCLI ``fit`` reads: ``model`` and ``data`` with ``class_path`` and
``init_args``, ``trainer`` arguments and ``seed_everything``. The finder's own options are flags (or keys
of a config): ``--metric``, ``--mode``, ``--budget``, ``--seeds``, ``--storage``, ``--study_name``,
``--out``, ``--pruner`` and the search space, ``--space.weight_decay "[0.001, 0.3]"`` etc. A config written
for a LightningCLI with a fixed DataModule class has no ``data.class_path``: give it first,
``--data.class_path my.DataModule --config my.yaml``.

Run the same command in several processes (or machines) with the same ``--storage`` to share the search;
run it again to resume an interrupted search.

Example:
    >>> finder_parser().get_defaults().budget
    10.0
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, Literal

import optuna
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from lightning_reg.find.objective import CONTROLLED_TRAINER_ARGS
from lightning_reg.find.search import default_pruner, find_regularization
from lightning_reg.find.space import SearchSpace

__all__ = ["finder_main", "finder_parser"]


def finder_parser() -> ArgumentParser:
    """Return the command line's parser: a LightningCLI config's sections plus the finder's options.

    Example:
        >>> finder_parser().get_defaults().space.presets
        ('mild', 'medium', 'strong')
    """
    p = ArgumentParser(
        prog="python -m lightning_reg.find",
        description="Search the regularization of a LightningCLI config on its validation data.",
        exit_on_error=False,
    )
    p.add_argument("-c", "--config", action=ActionConfigFile, help="a LightningCLI config (repeatable)")
    p.add_subclass_arguments(LightningModule, "model", instantiate=False, required=True)
    p.add_subclass_arguments(LightningDataModule, "data", required=True)
    p.add_class_arguments(Trainer, "trainer", instantiate=False)
    p.add_argument("--seed_everything", type=int | bool, default=0, help="seed of the search runs")
    p.add_argument(
        "--ckpt_path", type=str | None, default=None, help="read from LightningCLI configs; unused"
    )
    p.add_argument("--metric", type=str, default="val_loss", help="validation metric to optimise")
    p.add_argument("--mode", type=Literal["min", "max"] | None, default=None, help="required unless val_loss")
    p.add_argument("--budget", type=float, default=10.0, help="search budget in full-run equivalents")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the final comparison (0: none)")
    p.add_argument(
        "--storage", type=str | None, default=None, help="journal file or RDB URL (default: in memory)"
    )
    p.add_argument("--study_name", type=str, default="lightning-reg-find")
    p.add_argument(
        "--pruner",
        type=Literal["halving", "hyperband", "median", "none"],
        default="halving",
        help="Optuna pruner (halving: successive halving from a quarter of the run)",
    )
    p.add_argument(
        "--stale_after", type=float, default=300.0, help="seconds before a silent trial is retried"
    )
    p.add_argument("--out", type=str | None, default="find_results", help="folder for the outputs")
    p.add_argument("--verbose", type=int, default=1)
    p.add_class_arguments(SearchSpace, "space")
    return p


def _pruner(name: str, max_epochs: int | None) -> optuna.pruners.BasePruner:
    if name == "halving":
        return default_pruner(max_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, (max_epochs or 4) // 4))
    if name == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=max(1, (max_epochs or 4) // 4))
    return optuna.pruners.NopPruner()


def _instantiate(parser: ArgumentParser, cfg: Namespace) -> Namespace:
    """Build the classes of a parsed config, on every supported jsonargparse.

    ``instantiate`` where it exists (newer releases deprecate ``instantiate_classes``), else
    ``instantiate_classes`` (the floor, 4.41).
    """
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return build(cfg)


def _model_kwargs(class_path: str, init_args: Namespace) -> tuple[type, dict[str, Any]]:
    """Return the model class and its arguments, nested classes built (optimizer, scheduler callables)."""
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "model", instantiate=False)
    built = _instantiate(parser, parser.parse_object({"model": init_args.as_dict()}))
    return cls, dict(vars(built.model))


def finder_main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lightning_reg.find --config my.yaml [options]``; returns the exit code.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Example:
        >>> finder_main(["--metric", "val_acc"])  # no model, no data
        2
    """
    parser = finder_parser()
    try:
        cfg = parser.parse_args(argv)
        built = _instantiate(parser, cfg)
        cls, kwargs = _model_kwargs(cfg.model.class_path, cfg.model.init_args)
    except Exception as err:  # jsonargparse reports parse and build errors as several exception types
        hint = ""
        for key in ("model", "data"):
            if f'Parser key "{key}"' in str(err):
                hint = (
                    f"\nThe finder needs {key}.class_path: a config written for a LightningCLI with a fixed "
                    f"class has none; give it first: --{key}.class_path my.module.Class --config my.yaml"
                )
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    set_by_config = {k: kwargs.pop(k) for k in ("preset", "weight_decay") if kwargs.get(k) is not None}
    trainer_kwargs = dict(vars(built.trainer))
    if trainer_kwargs.get("devices") == "auto":  # the parser's default: one device per run, as in Python
        trainer_kwargs["devices"] = 1
    replaced = [k for k, v in CONTROLLED_TRAINER_ARGS.items() if trainer_kwargs.get(k) not in (None, v)]
    for key in CONTROLLED_TRAINER_ARGS:
        trainer_kwargs.pop(key, None)
    if cfg.verbose and (set_by_config or replaced):
        print(
            f"[find{f' pid {os.getpid()}' if cfg.storage else ''}] the finder sets these itself: "
            + ", ".join(
                [f"model.init_args.{k}={v!r}" for k, v in set_by_config.items()]
                + [f"trainer.{k}" for k in replaced]
            ),
            flush=True,
        )
    seed = cfg.seed_everything
    try:
        find_regularization(
            cls,
            built.data,
            model_kwargs=kwargs,
            trainer_kwargs=trainer_kwargs,
            metric=cfg.metric,
            mode=cfg.mode,
            space=built.space,
            budget=cfg.budget,
            seeds=cfg.seeds,
            seed=0 if isinstance(seed, bool) else seed,
            storage=cfg.storage,
            study_name=cfg.study_name,
            pruner=_pruner(cfg.pruner, trainer_kwargs.get("max_epochs")),
            out=cfg.out,
            stale_after=cfg.stale_after,
            verbose=cfg.verbose,
        )
    except (ValueError, TypeError) as err:  # a bad setting; anything else keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
