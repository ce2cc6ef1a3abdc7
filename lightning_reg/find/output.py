"""The finder's outputs: a LightningCLI config fragment, Python arguments, tables and a plot of the trials.

The fragment and the Python arguments say the same thing: the chosen preset override for the module
(``model.init_args.preset``) and the preset's callbacks (written by ``preset_config``), so a result is
used exactly like a preset. ``write_outputs`` writes all of them to a folder (each file replaced in
one step, so workers that finish together write the same files safely).

Example:
    >>> from lightning_reg import get_preset
    >>> from lightning_reg.find.result import FinderResult
    >>> from lightning_reg.find.space import Candidate
    >>> r = FinderResult("val_loss", "min", Candidate(get_preset("mild", weight_decay=0.01)), 3, 0.41,
    ...                  (), (), (), 10.0, 8.5, 0.0)
    >>> print(python_arguments(r).splitlines()[3])
    preset = get_preset('mild', weight_decay=0.01)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lightning_reg.find.result import FinderResult
from lightning_reg.presets import PRESET_NAMES, preset_config
from lightning_reg.stochastic_depth.layers import BranchEnd

__all__ = [
    "cli_fragment",
    "comparison_table",
    "plot_trials",
    "python_arguments",
    "trials_table",
    "verdict",
    "write_outputs",
]

# Components of a Preset that the Trainer side (the callbacks) applies.
_TRAINER_SIDE = (
    "drop_path_rate",
    "drop_path_rule",
    "drop_path_schedule",
    "drop_path_warmup",
    "dropout_rate",
    "clipping",
    "clip_max_norm",
    "patience",
    "overfitting_warmup",
    "overfitting_probe",
)


def _class_path(key: Any) -> str:
    return f"{key.__module__}.{key.__qualname__}" if isinstance(key, type) else str(key)


def cli_fragment(
    result: FinderResult, branch_ends: Mapping[Any, BranchEnd] | None = None, verbose: int = 1
) -> str:
    """Write the choice as a LightningCLI config fragment (YAML), used after the user's own config.

    ``model.init_args.preset`` is the chosen preset as a mapping of its fields (LightningCLI builds a
    ``Preset`` from it when the model's ``preset`` argument is typed ``str | Preset | None``, as
    ``RegularizedModule``'s is), ``weight_decay: null`` lets the preset's value apply, searched model
    arguments (``dropout``) follow; ``trainer.callbacks`` are the preset's callbacks, as
    ``preset_config`` writes them.

    Args:
        result: the finder's result.
        branch_ends: the residual blocks given to the finder, if any (types are written as dotted paths).
        verbose: the callbacks' verbosity.

    Returns:
        The YAML text.

    Example:
        >>> from lightning_reg import get_preset
        >>> from lightning_reg.find.space import Candidate
        >>> r = FinderResult("val_loss", "min", Candidate(get_preset("medium", patience=8)), 5, 0.4,
        ...                  (), (), (), 10.0, 9.0, 0.0)
        >>> data = yaml.safe_load(cli_fragment(r))
        >>> early_stopping = data["trainer"]["callbacks"][1]["init_args"]
        >>> data["model"]["init_args"]["preset"]["patience"], early_stopping["patience"]
        (8, 8)
    """
    c = result.choice
    p = c.preset
    base = p.name if p.name in PRESET_NAMES else PRESET_NAMES[0]
    text = preset_config(
        base,
        monitor=c.monitor,
        mode=c.mode,
        branch_ends={_class_path(k): v for k, v in branch_ends.items()} if branch_ends else None,
        verbose=verbose,
        **{k: getattr(p, k) for k in _TRAINER_SIDE},
    )
    data = yaml.safe_load(text)
    preset = p.as_dict()
    data["model"]["init_args"] = {"preset": preset, "weight_decay": None, **dict(c.model_args)}
    for cb in data["trainer"]["callbacks"]:
        if cb["class_path"] == "lightning_reg.presets.PresetSummary":
            cb["init_args"]["preset"] = dict(preset)
    where = "" if not result.trials else f" (trial {result.choice_trial})"
    header = [
        f"# lightning-reg finder: the chosen regularization{where}, {result.metric} "
        f"{result.choice_value:.4g} on validation data.",
        f"# {c.describe()}",
        "# Use: --config <your config> --config <this file> (this trainer.callbacks replaces earlier lists).",
        "# The model's `preset` argument must accept a Preset mapping: type it `str | Preset | None`.",
        "# For LightningCLI(MyModel) with one model class, move the keys under model.init_args up to model.",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def python_arguments(result: FinderResult, model_name: str = "YourModel") -> str:
    """Write the choice as Python: the preset override, the model's arguments and the callbacks.

    A template: ``...`` stands for the model's and the Trainer's other arguments.

    Args:
        result: the finder's result.
        model_name: the model's class name in the text.

    Returns:
        A few lines of Python.

    Example:
        >>> from lightning_reg import get_preset
        >>> from lightning_reg.find.space import Candidate
        >>> r = FinderResult("val_acc", "max", Candidate(get_preset("strong"), "val_acc", "max"), 1, 0.9,
        ...                  (), (), (), 10.0, 9.0, 0.0)
        >>> print(python_arguments(r).splitlines()[-1])
        trainer = lightning.Trainer(..., callbacks=preset_callbacks(preset, monitor='val_acc', mode='max'))
    """
    c = result.choice
    over = ", ".join(f"{k}={v!r}" for k, v in c.overrides().items())
    args = "".join(f", {k}={v!r}" for k, v in c.model_args.items())
    return "\n".join(
        [
            "import lightning",
            "from lightning_reg import get_preset, preset_callbacks",
            "",
            f"preset = get_preset({c.preset.name!r}{', ' + over if over else ''})",
            f"model = {model_name}(..., preset=preset, weight_decay=None{args})",
            "trainer = lightning.Trainer(..., callbacks=preset_callbacks(preset, "
            f"monitor={c.monitor!r}, mode={c.mode!r}))",
        ]
    )


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def comparison_table(result: FinderResult) -> str:
    """Tabulate the choice against no regularization and the best preset, paired by seed (Markdown).

    Example:
        >>> from lightning_reg import get_preset
        >>> from lightning_reg.find.result import ArmResult
        >>> from lightning_reg.find.space import Candidate, SearchSpace, no_regularization
        >>> c = Candidate(get_preset("mild"))
        >>> none = no_regularization(SearchSpace())
        >>> arms = (ArmResult("choice", c, (0.9, 0.92), 1.5), ArmResult("none", none, (0.85, 0.9), 2.0))
        >>> r = FinderResult("val_acc", "max", c, 0, 0.91, arms, (1, 2), (), 10.0, 8.0, 3.5)
        >>> print(comparison_table(r).splitlines()[5])
        | none | 0.875 | +0.035 [-0.156, +0.226] | 0.85, 0.9 |
    """
    r = result
    better = "higher" if r.mode == "max" else "lower"
    lines = [
        f"Choice: trial {r.choice_trial}, {r.choice.describe()} ({r.metric} {r.choice_value:.4g} in the "
        "search)." + _ladder_remark(r),
    ]
    if r.arms:
        diffs = r.differences()
        lines += [
            "",
            f"| configuration | {r.metric}, mean of {len(r.seeds)} seed{'s' if len(r.seeds) != 1 else ''} "
            "| choice - configuration (95 % interval) "
            f"| per seed {', '.join(map(str, r.seeds))} |",
            "|---|---|---|---|",
        ]
        for arm in r.arms:
            diff = diffs[arm.label].format() if arm.label in diffs else ""
            lines.append(
                f"| {arm.label} | {_num(arm.mean)} | {diff} | {', '.join(_num(v) for v in arm.values)} |"
            )
        lines += [
            "",
            f"{better.capitalize()} is better for {r.metric}. Each value is the metric of the weights a run "
            "returns, on the validation data (the data that chose the configuration, so they flatter it); an "
            "interval that excludes 0 is a difference these seeds resolve.",
            "",
            verdict(r),
        ]
    lines += [
        "",
        f"Cost: search {r.search_cost:.2f} full runs of a budget of {r.budget:g}, "
        f"comparison {r.compare_cost:.2f}; "
        f"total {r.total_cost:.2f} full-run equivalents.",
    ]
    return "\n".join(lines)


def _ladder_remark(result: FinderResult) -> str:
    chosen = next((t for t in result.trials if t.number == result.choice_trial), None)
    if chosen is None or chosen.ladder is None:
        return ""
    return (
        f" It is the ladder's preset {chosen.ladder!r} as the search ran it, so the comparison has no"
        " separate preset row."
    )


def verdict(result: FinderResult) -> str:
    """Say in one sentence how the choice fared against each other arm on the comparison seeds.

    An arm that scored better than the choice is named, and when the seeds resolve it (the interval
    excludes 0) the sentence says to prefer it: the search measured each trial on one seed, which can
    flatter the configuration it chose.

    Args:
        result: a finder result with a comparison (``seeds >= 1``).

    Returns:
        The sentence, or ``""`` without a comparison.

    Example:
        >>> from lightning_reg import get_preset
        >>> from lightning_reg.find.result import ArmResult
        >>> from lightning_reg.find.space import Candidate, SearchSpace, no_regularization
        >>> c, none = Candidate(get_preset("mild")), no_regularization(SearchSpace())
        >>> arms = (ArmResult("choice", c, (0.8, 0.81, 0.82), 1), ArmResult("none", none, (0.9,) * 3, 1))
        >>> print(verdict(FinderResult("val_acc", "max", c, 0, 0.91, arms, (1, 2, 3), (), 10.0, 8.0, 3.0)))
        On these seeds the choice is worse than none. Prefer none: the search measured the choice on one seed.
    """
    diffs = result.differences()
    if not diffs:
        return ""
    sign = 1.0 if result.mode == "max" else -1.0
    parts, prefer = [], None
    for label, d in diffs.items():
        ahead = sign * d.mean >= 0
        if d.excludes_zero:
            parts.append(f"{'better' if ahead else 'worse'} than {label}")
            prefer = prefer or (None if ahead else label)
        else:
            parts.append(f"within noise of {label} ({'the choice' if ahead else label} scored better)")
    text = "On these seeds the choice is " + ", ".join(parts) + "."
    return text + (f" Prefer {prefer}: the search measured the choice on one seed." if prefer else "")


def trials_table(result: FinderResult) -> str:
    """Every trial of the search as a Markdown table: state, value, cost and configuration.

    Example:
        >>> from lightning_reg import get_preset
        >>> from lightning_reg.find.result import TrialSummary
        >>> from lightning_reg.find.space import Candidate
        >>> t = TrialSummary(0, "COMPLETE", 0.3, 1.0, "mild; early stopping on val_loss, patience 20", "mild")
        >>> c = Candidate(get_preset("mild"))
        >>> r = FinderResult("val_loss", "min", c, 7, 0.2, (), (), (t,), 10.0, 1.0, 0.0)
        >>> print(trials_table(r).splitlines()[2])
        | 0 | complete (preset) | 0.3 | 1.00 | mild; early stopping on val_loss, patience 20 |
    """
    lines = [
        f"| trial | state | {result.metric} | cost (full runs) | configuration |",
        "|---|---|---|---|---|",
    ]
    for t in result.trials:
        state = t.state.lower() + (" (preset)" if t.ladder else "")
        if t.number == result.choice_trial:
            state = f"**{state}, chosen**"
        lines.append(f"| {t.number} | {state} | {_num(t.value)} | {t.cost:.2f} | {t.description} |")
    return "\n".join(lines)


def plot_trials(result: FinderResult, path: str | os.PathLike[str]) -> Path:
    """Plot the search: each trial's value by trial number, and the validation curves the pruner saw.

    Needs matplotlib (imported here, so the finder runs without it); writes a PNG with the ``Agg`` backend.

    Args:
        result: the finder's result.
        path: the PNG file to write.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib  # optional: only the plot needs it

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is in the dev extra
        raise ImportError("the plot of the trials needs matplotlib: pip install matplotlib") from err
    fig, (ax_trials, ax_curves) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"COMPLETE": ("o", "tab:blue"), "PRUNED": ("x", "tab:gray"), "FAIL": ("v", "tab:red")}
    for t in result.trials:
        if t.value is None:
            continue
        marker, color = styles.get(t.state, ("o", "black"))
        if t.ladder:
            marker, color = "s", "tab:green"
        chosen = t.number == result.choice_trial
        ax_trials.scatter(
            t.number,
            t.value,
            marker="*" if chosen else marker,
            color="tab:orange" if chosen else color,
            s=160 if chosen else 40,
            zorder=3,
        )
        if t.ladder:
            ax_trials.annotate(
                t.ladder, (t.number, t.value), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        if t.curve:
            xs, ys = zip(*t.curve)
            ax_curves.plot(
                [x + 1 for x in xs],
                ys,
                color="tab:orange" if chosen else color,
                alpha=1.0 if chosen else 0.5,
                linewidth=2.2 if chosen else 1.0,
            )
    ax_trials.set(
        xlabel="trial", ylabel=result.metric, title="trials (square: preset, x: pruned, star: chosen)"
    )
    ax_curves.set(xlabel="epoch", ylabel=result.metric, title="validation curves seen by the pruner")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _partial(path: Path) -> Path:
    """Return a temporary name next to ``path`` for this process (workers may write the same outputs)."""
    return path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")


def _write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` in one step (a temporary file renamed over it)."""
    tmp = _partial(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_outputs(
    result: FinderResult, out: str | os.PathLike[str], branch_ends: Mapping[Any, BranchEnd] | None = None
) -> list[Path]:
    """Write ``choice.yaml``, ``choice.py``, ``comparison.md`` (with the trials) and ``trials.png``.

    The plot is skipped (with a note in ``comparison.md``) when matplotlib is not installed.

    Args:
        result: the finder's result.
        out: the folder (created if needed).
        branch_ends: the residual blocks given to the finder, for the fragment.

    Returns:
        The paths written.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        _write(folder / "choice.yaml", cli_fragment(result, branch_ends)),
        _write(folder / "choice.py", python_arguments(result) + "\n"),
    ]
    plot_note = ""
    try:
        os.replace(plot_trials(result, _partial(folder / "trials.png")), folder / "trials.png")
        paths.append(folder / "trials.png")
    except ImportError as err:  # pragma: no cover - matplotlib is in the find extra
        plot_note = f"\n\n(no plot: {err})"
    report = comparison_table(result) + "\n\n## Trials\n\n" + trials_table(result) + plot_note + "\n"
    paths.insert(2, _write(folder / "comparison.md", report))
    return paths
