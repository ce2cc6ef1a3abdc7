"""The one-command demo: a baseline that overfits against the three presets, several seeds, intervals, plots.

    python -m example_projects.compare                 # 5 seeds x {baseline, mild, medium, strong}, 2 workers
    python -m example_projects.compare --tiny          # seconds: a smoke run (what CI runs)
    python -m example_projects.compare --seeds 0 1 -- --trainer.max_epochs=60   # extra args go to every run

Every run is the MNIST-1D project through its LightningCLI, exactly as

    python -m example_projects.mnist1d fit --config example_projects/mnist1d/configs/demo.yaml \\
        --config example_projects/mnist1d/configs/presets/<preset>.yaml --seed_everything <seed>

(the baseline adds ``configs/presets/none.yaml``: the overfitting monitor alone, which observes and changes
nothing), built in-process, followed by a test of the weights the run ends with (a preset's: the restored
best weights; the baseline's: the last ones). The regime (``configs/demo.yaml``: the 1-D ResNet on 256
training signals, a constant learning rate, 40 epochs) is one where the baseline overfits: it fits its
training set, ends 13.5 pp above validation, and its validation loss is unstable above its minimum.

It prints one line per seed, a table (test accuracy per configuration and its paired difference to the
baseline with a 95 % t-interval over seeds) and writes logs, ``summary.md``/``summary.json`` and
``compare.png`` (validation curves of every run, restored epochs marked) under ``--out`` (default
``outputs/compare``). Then it trains one more run, ``configs/demo_alert.yaml`` (an MLP that overfits
cleanly, with the overfitting monitor alone), prints the monitor's warning as a user sees it and plots that
run's curves with the alert (``alert.png``). ``--publish`` also writes the table and the two plots into
``docs/`` (what the documentation shows). Lightning's own tips and warnings, and the monitor's warnings in
the table runs, are silenced here, in the demo only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "mnist1d" / "configs"
CONFIGS = ("baseline", "mild", "medium", "strong")
#: The demo's base config (the regime); each configuration adds ``presets/<name>.yaml`` to it.
BASE_CONFIG = "demo.yaml"
#: The alert illustration: a model that overfits cleanly (validation loss turns up as a trend while training
#: improves), trained once with the monitor alone; its curves with the alert are ``alert.png``.
ALERT_CONFIG = "demo_alert.yaml"
ALERT = "alert"
#: The preset the documentation recommends when the validation loss turns up (the demo's regime).
RECOMMENDED = "medium"
#: Extra LightningCLI arguments of every run (none: ``configs/demo.yaml`` is the regime).
DEMO_OVERRIDES: list[str] = []
TINY_OVERRIDES = [
    "--data.train_size=128",
    "--data.val_size=128",
    "--trainer.max_epochs=2",
    "--trainer.limit_test_batches=2",
    "--trainer.log_every_n_steps=1",
    "--model.init_args.widths=[8, 16]",
    "--model.init_args.blocks_per_stage=1",
]
#: Our own alert warning: silenced in the table runs (the "first alert" column shows it, else one line per
#: run that alerts); the alert illustration run prints it, as a user sees it.
ALERT_WARNING = "OverfittingMonitor: overfitting at"
# Lightning's tips and warnings that say nothing about this demo's results, and ours (silenced here only).
_QUIET_WARNINGS = (
    "LightningCLI's args parameter",
    "You have overridden `on_after_batch_transfer`",
    ".*does not have many workers",
    "The number of training batches",
    ".*LeafSpec.*",
    ".*treespec.*",
    ALERT_WARNING,
)
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


@contextmanager
def quiet_lightning(show_alerts: bool = False) -> Iterator[None]:
    """Silence Lightning's info lines and known tips/warnings for the duration (restored afterwards)."""
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            if show_alerts and pattern == ALERT_WARNING:
                continue
            warnings.filterwarnings("ignore", message=pattern)
        try:
            from lightning.fabric.utilities.warnings import PossibleUserWarning

            warnings.filterwarnings("ignore", category=PossibleUserWarning)
        except ImportError:  # pragma: no cover
            pass
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@dataclass
class RunResult:
    """What one run ended with."""

    config: str
    seed: int
    test_acc: float
    train_acc: float
    val_acc: float
    best_epoch: int | None
    epochs_run: int
    first_alert: int | None
    val_loss_min_epoch: int
    val_loss_min: float
    val_loss_peak_after_min: float
    seconds: float
    log_dir: str

    @property
    def gap(self) -> float:
        return self.train_acc - self.val_acc


def config_args(config: str) -> list[str]:
    """The ``--config`` arguments of one configuration (baseline, or baseline + a preset fragment)."""
    path = CONFIG_DIR / "presets" / f"{'none' if config in ('baseline', ALERT) else config}.yaml"
    if not path.is_file():
        raise SystemExit(f"unknown configuration {config!r}: no {path}")
    base = ALERT_CONFIG if config == ALERT else BASE_CONFIG
    return ["--config", str(CONFIG_DIR / base), "--config", str(path)]


def _best_epoch(trainer) -> int | None:
    from lightning.pytorch.callbacks import EarlyStopping

    for cb in trainer.callbacks:
        if isinstance(cb, EarlyStopping) and getattr(cb, "best_epoch", None) is not None:
            return int(cb.best_epoch)
    return None


def _per_epoch(log_dir: Path, key: str) -> tuple[list[int], list[float]]:
    from lightning_reg.report import load_metrics

    series = load_metrics(log_dir).series.get(key)
    return series.per_epoch() if series is not None else ([], [])


def run_one(
    config: str, seed: int, out_dir: str, overrides: Sequence[str] = (), threads: int = 1
) -> RunResult:
    """Train and test one configuration with one seed; logs go to ``out_dir/logs/<config>/seed<seed>``."""
    import torch
    from torch.utils.data import DataLoader

    from example_projects.common import accuracy, make_cli
    from example_projects.mnist1d.data import MNIST1DDataModule
    from lightning_reg.report.data import ReportKeys

    torch.set_num_threads(threads)
    out = Path(out_dir)
    log_dir = out / "logs" / config / f"seed{seed}"
    shutil.rmtree(log_dir, ignore_errors=True)
    args = [
        *config_args(config),
        f"--seed_everything={seed}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={out / 'logs'}",
        f"--trainer.logger.init_args.name={config}",
        f"--trainer.logger.init_args.version=seed{seed}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *overrides,
    ]
    start = time.perf_counter()
    with quiet_lightning(show_alerts=config == ALERT):
        cli = make_cli(MNIST1DDataModule, args=args, run=False)
        trainer, model, dm = cli.trainer, cli.model, cli.datamodule
        trainer.fit(model, datamodule=dm)
        test_acc = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"])
    train_acc = accuracy(model, DataLoader(dm.train_set, batch_size=256))
    val_acc = accuracy(model, DataLoader(dm.val_set, batch_size=256))
    seconds = time.perf_counter() - start
    epochs, val_loss = _per_epoch(log_dir, "val_loss")
    alert_epochs, alerts = _per_epoch(log_dir, ReportKeys().alert)
    low = min(range(len(val_loss)), key=val_loss.__getitem__) if val_loss else 0
    return RunResult(
        config=config,
        seed=seed,
        test_acc=test_acc,
        train_acc=train_acc,
        val_acc=val_acc,
        best_epoch=_best_epoch(trainer),
        epochs_run=trainer.current_epoch,
        first_alert=next((int(e) for e, a in zip(alert_epochs, alerts) if a > 0), None),
        val_loss_min_epoch=int(epochs[low]) if epochs else 0,
        val_loss_min=val_loss[low] if val_loss else math.nan,
        val_loss_peak_after_min=max(val_loss[low:]) if val_loss else math.nan,
        seconds=seconds,
        log_dir=str(log_dir),
    )


def _per_seed(values: Sequence[int | None]) -> str:
    if all(v is None for v in values):
        return "-"
    return ",".join("-" if v is None else str(v) for v in values)


def paired(results: Sequence[RunResult], config: str, reference: str = "baseline"):
    """Paired test-accuracy difference ``config - reference`` over the seeds both ran."""
    from example_projects.stats import paired_diff

    acc = {(r.config, r.seed): r.test_acc for r in results}
    seeds = sorted(s for c, s in acc if c == config and (reference, s) in acc)
    if not seeds:
        return None
    return paired_diff([acc[(config, s)] for s in seeds], [acc[(reference, s)] for s in seeds])


def summary_table(results: Sequence[RunResult]) -> str:
    """Markdown table: one row per configuration, aggregated over seeds."""
    head = (
        "| config | test acc (mean ± std) | - baseline: mean [95% CI] | restored epoch | epochs run | "
        "first alert | train - val acc | time/run |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for config in dict.fromkeys(r.config for r in results):
        rs = [r for r in results if r.config == config]
        accs = [r.test_acc for r in rs]
        acc = f"{100 * statistics.fmean(accs):.1f}%" + (
            f" ± {100 * statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
        )
        d = paired(results, config) if config != "baseline" else None
        diff = "-" if d is None else d.pp() + (" *" if config == RECOMMENDED else "")
        lines.append(
            f"| {config} | {acc} | {diff} | {_per_seed([r.best_epoch for r in rs])} | "
            f"{_per_seed([r.epochs_run for r in rs])} | {_per_seed([r.first_alert for r in rs])} | "
            f"{statistics.fmean(100 * r.gap for r in rs):+.1f} pp | "
            f"{statistics.fmean(r.seconds for r in rs):.0f} s |"
        )
    return "\n".join(lines)


_COLOURS = {"baseline": "tab:gray", "mild": "tab:green", "medium": "tab:blue", "strong": "tab:purple"}


def plot_comparison(results: Sequence[RunResult], out_path: Path) -> Path:
    """Validation loss and accuracy per epoch of every run, one colour per configuration, restored epochs."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from lightning_reg.report import load_metrics

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labelled: set[str] = set()
    for r in results:
        m = load_metrics(r.log_dir).series
        c = _COLOURS.get(r.config)
        for ax, key in zip(axes, ("val_loss", "val_acc")):
            if key not in m:
                continue
            ep, vals = m[key].per_epoch()
            label = None if r.config in labelled else r.config
            ax.plot(ep, vals, color=c, alpha=0.75, linewidth=1.1, label=label)
            if r.best_epoch is not None and r.best_epoch in ep:
                ax.scatter(
                    [r.best_epoch], [vals[ep.index(r.best_epoch)]], color=c, marker="*", s=80, zorder=5
                )
        labelled.add(r.config)
    axes[0].set_ylabel("validation loss")
    axes[1].set_ylabel("validation accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(title="* = restored epoch", fontsize=8)
    seeds = len({r.seed for r in results})
    fig.suptitle(f"MNIST-1D demo: validation curves of every run, baseline vs presets ({seeds} seeds)")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def _run_job(job: tuple[str, int, str, list[str], int]) -> RunResult:
    return run_one(*job)


def main(argv: Sequence[str] | None = None) -> list[RunResult]:
    p = argparse.ArgumentParser(
        prog="python -m example_projects.compare",
        description="MNIST-1D: a baseline that overfits against the presets; table, intervals and plots.",
        epilog="Arguments after `--` are LightningCLI overrides passed to every run.",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help="baseline and preset names")
    p.add_argument("--out", type=Path, default=Path("outputs/compare"))
    p.add_argument("--tiny", action="store_true", help="one seed, 2 epochs, tiny model: a smoke test")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes; default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run (default 1)")
    p.add_argument("--publish", action="store_true", help="also write the table and plots into docs/")
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1 :]
    a = p.parse_args(argv)
    overrides = DEMO_OVERRIDES + (TINY_OVERRIDES if a.tiny else []) + overrides
    if a.tiny and a.seeds == [0, 1, 2, 3, 4]:
        a.seeds = [0]
    jobs = [(c, s, str(a.out), overrides, a.threads) for s in a.seeds for c in a.configs]
    n_jobs = max(1, min(a.jobs, len(jobs)))
    print(
        f"lightning-reg demo: MNIST-1D, {' vs '.join(a.configs)}; seeds {', '.join(map(str, a.seeds))}; "
        f"{len(jobs)} runs on {n_jobs} process(es)",
        flush=True,
    )
    start = time.perf_counter()
    results: list[RunResult] = []
    pending = {s: len(a.configs) for s in a.seeds}

    def done(r: RunResult) -> None:
        results.append(r)
        pending[r.seed] -= 1
        if pending[r.seed] == 0:
            rs = sorted((x for x in results if x.seed == r.seed), key=lambda x: a.configs.index(x.config))
            accs = "  ".join(f"{x.config} {100 * x.test_acc:.1f}%" for x in rs)
            print(f"  seed {r.seed}: test acc  {accs}   ({time.perf_counter() - start:.0f} s)", flush=True)

    if n_jobs == 1:
        for job in jobs:
            done(_run_job(job))
    else:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn")) as pool:
            for r in pool.map(_run_job, jobs):
                done(r)
    total = time.perf_counter() - start
    order = {c: i for i, c in enumerate(a.configs)}
    results.sort(key=lambda r: (order[r.config], r.seed))

    table = summary_table(results)
    plots = {"compare": plot_comparison(results, a.out / "compare.png")}
    # The alert illustration: one run of a model that overfits cleanly, with the monitor alone.
    alert_overrides = [o for o in overrides if not o.startswith("--model.")]
    alert = run_one(ALERT, a.seeds[0], str(a.out), alert_overrides, a.threads)
    total = time.perf_counter() - start
    with quiet_lightning():
        from lightning_reg.report import load_metrics
        from lightning_reg.report.plots import plot_train_val

        plots["alert"] = plot_train_val(
            load_metrics(alert.log_dir),
            a.out / "alert.png",
            title=f"MLP on 1000 signals (configs/{ALERT_CONFIG}), seed {alert.seed}: overfitting alert",
        ).path
    lines = ["", table, ""]
    base_runs = [r for r in results if r.config == "baseline"]
    if base_runs:
        gap = statistics.fmean(100 * r.gap for r in base_runs)
        lines.append(
            f"baseline: train - val accuracy {gap:+.1f} pp at the end; first overfitting alert at epoch "
            f"{_per_seed([r.first_alert for r in base_runs])}; validation loss lowest at epoch "
            f"{_per_seed([r.val_loss_min_epoch for r in base_runs])} "
            f"({statistics.fmean(r.val_loss_min for r in base_runs):.2f} on average), "
            f"up to {max(r.val_loss_peak_after_min for r in base_runs):.2f} after it."
        )
    lines.append(
        f"alert illustration (configs/{ALERT_CONFIG}, an MLP that overfits cleanly): validation loss lowest"
        f" at epoch {alert.val_loss_min_epoch} ({alert.val_loss_min:.2f}), up to"
        f" {alert.val_loss_peak_after_min:.2f} after it; first overfitting alert at epoch"
        f" {_per_seed([alert.first_alert])}."
    )
    rec = paired(results, RECOMMENDED) if RECOMMENDED in a.configs else None
    if rec is not None:
        verdict = "excludes 0" if rec.excludes_zero else "includes 0"
        lines.append(
            f"recommended preset {RECOMMENDED!r} (*) - baseline, test accuracy paired by seed: {rec.pp()}, "
            f"95% t-interval over {len(rec.diffs)} seeds {verdict}."
        )
    summary = {
        "runs": [asdict(r) for r in results],
        "alert_run": asdict(alert),
        "total_seconds": total,
        "jobs": n_jobs,
        "load_average_at_end": _load_average(),
        "overrides": overrides,
        "plots": {k: str(v) for k, v in plots.items()},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "summary.md").write_text("\n".join(lines[1:]) + "\n")
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines.append(
        f"{len(results)} runs and the alert illustration in {total:.0f} s ({total / 60:.1f} min) on {n_jobs}"
        " process(es); "
        f"load average {_load_average()}."
    )
    lines.append(f"plots: {', '.join(str(v) for v in plots.values())}; logs and summary: {a.out}")
    if a.publish:
        docs = ROOT / "docs"
        (docs / "examples" / "results").mkdir(parents=True, exist_ok=True)
        (docs / "assets").mkdir(parents=True, exist_ok=True)
        command = "python -m example_projects.compare" + (" " + " ".join(argv) if argv else "")
        (docs / "examples" / "results" / "compare.md").write_text(
            "\n".join(lines[1:-2]) + f"\n\nReproduce: `{command}` ({len(results)} runs in {total:.0f} s on "
            f"{n_jobs} processes, load average {_load_average()}).\n"
        )
        for name, path in plots.items():
            shutil.copyfile(path, docs / "assets" / f"compare_{name}.png")
        lines.append(
            f"published: {docs / 'examples' / 'results' / 'compare.md'} and docs/assets/compare_*.png"
        )
    print("\n".join(lines), flush=True)
    return results


if __name__ == "__main__":
    main()
