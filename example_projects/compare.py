"""The one-command demo: MNIST-1D without and with lightning-reg, a few seeds, a table and plots.

    python -m example_projects.compare                 # 5 seeds x {baseline, regularized}
    python -m example_projects.compare --tiny          # seconds: a smoke run (what CI runs)
    python -m example_projects.compare --seeds 0 1 -- --trainer.max_epochs=30   # extra args go to every run

Each run is exactly ``python -m example_projects.mnist1d fit --config example_projects/mnist1d/configs/
<config>.yaml --seed_everything <seed>`` (built in-process through the same LightningCLI), followed by a
test of the weights the run ends with (for ``regularized``: the restored best weights). The table shows,
per configuration, the test accuracy (mean and sample std over seeds), the restored best epoch, the
train/validation accuracy gap of the final model (both measured in eval mode, so dropout and drop-path do
not bias the training number) and the epoch of the first overfitting alert. Logs, a JSON/Markdown summary
and PNG plots go to ``--out`` (default ``outputs/compare``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "mnist1d" / "configs"
CONFIGS = ("baseline", "regularized")
TINY_OVERRIDES = [
    "--data.train_size=128",
    "--data.val_size=128",
    "--trainer.max_epochs=2",
    "--trainer.limit_test_batches=2",
    "--trainer.log_every_n_steps=1",
    "--model.init_args.widths=[8, 16]",
    "--model.init_args.blocks_per_stage=1",
]


@dataclass
class RunResult:
    config: str
    seed: int
    test_acc: float
    train_acc: float
    val_acc: float
    best_epoch: int | None
    epochs_run: int
    first_alert: int | None
    seconds: float
    log_dir: str

    @property
    def gap(self) -> float:
        return self.train_acc - self.val_acc


def _best_epoch(trainer) -> int | None:
    from lightning.pytorch.callbacks import EarlyStopping

    for cb in trainer.callbacks:
        if isinstance(cb, EarlyStopping) and getattr(cb, "best_epoch", None) is not None:
            return int(cb.best_epoch)
    return None


def _first_alert(log_dir: Path, key: str) -> int | None:
    from lightning_reg.report import load_metrics

    series = load_metrics(log_dir).series.get(key)
    if series is None:
        return None
    for epoch, value in zip(*series.per_epoch()):
        if value > 0:
            return int(epoch)
    return None


def run_one(
    config: str, seed: int, out_dir: Path, overrides: Sequence[str] = (), alert_key: str = ""
) -> RunResult:
    """Train and test one configuration with one seed; logs go to ``out_dir/logs/<config>/seed<seed>``."""
    from torch.utils.data import DataLoader

    from example_projects.common import accuracy, make_cli
    from example_projects.mnist1d.data import MNIST1DDataModule
    from lightning_reg.report import ReportKeys

    log_dir = out_dir / "logs" / config / f"seed{seed}"
    shutil.rmtree(log_dir, ignore_errors=True)
    args = [
        "--config",
        str(CONFIG_DIR / f"{config}.yaml"),
        f"--seed_everything={seed}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={out_dir / 'logs'}",
        f"--trainer.logger.init_args.name={config}",
        f"--trainer.logger.init_args.version=seed{seed}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *overrides,
    ]
    start = time.perf_counter()
    with warnings.catch_warnings():
        # We pass the whole command line as `args` on purpose; the demo's own flags are not for LightningCLI.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = make_cli(MNIST1DDataModule, args=args, run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=dm)
    test_acc = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"])
    train_acc = accuracy(model, DataLoader(dm.train_set, batch_size=256))
    val_acc = accuracy(model, DataLoader(dm.val_set, batch_size=256))
    seconds = time.perf_counter() - start
    return RunResult(
        config=config,
        seed=seed,
        test_acc=test_acc,
        train_acc=train_acc,
        val_acc=val_acc,
        best_epoch=_best_epoch(trainer),
        epochs_run=trainer.current_epoch,
        first_alert=_first_alert(log_dir, alert_key or ReportKeys().alert),
        seconds=seconds,
        log_dir=str(log_dir),
    )


def _mean_std(xs: Sequence[float]) -> str:
    if len(xs) < 2:
        return f"{100 * xs[0]:.1f}%"
    return f"{100 * statistics.mean(xs):.1f}% ± {100 * statistics.stdev(xs):.1f}"


def _per_seed(values: Sequence[int | None]) -> str:
    if all(v is None for v in values):
        return "-"
    return ", ".join("-" if v is None else str(v) for v in values)


def summary_table(results: Sequence[RunResult]) -> str:
    """Markdown table: one row per configuration, aggregated over seeds."""
    head = (
        "| config | test acc (mean ± std) | best epoch restored | epochs run | "
        "final train - val acc (eval mode) | first overfitting alert (epoch) | time per run |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for config in dict.fromkeys(r.config for r in results):
        rs = [r for r in results if r.config == config]
        lines.append(
            f"| {config} | {_mean_std([r.test_acc for r in rs])} | {_per_seed([r.best_epoch for r in rs])} | "
            f"{_per_seed([r.epochs_run for r in rs])} | "
            f"{statistics.mean(100 * r.gap for r in rs):+.1f} pp | "
            f"{_per_seed([r.first_alert for r in rs])} | "
            f"{statistics.mean(r.seconds for r in rs):.0f} s |"
        )
    configs = list(dict.fromkeys(r.config for r in results))
    if len(configs) == 2:
        acc = {(r.config, r.seed): r.test_acc for r in results}
        seeds = [s for s in dict.fromkeys(r.seed for r in results) if all((c, s) in acc for c in configs)]
        diffs = [100 * (acc[(configs[1], s)] - acc[(configs[0], s)]) for s in seeds]
        if diffs:
            lines.append("")
            lines.append(
                f"{configs[1]} - {configs[0]} test accuracy, paired by seed: "
                f"mean {statistics.mean(diffs):+.1f} pp "
                f"(per seed: {', '.join(f'{d:+.1f}' for d in diffs)})"
            )
    return "\n".join(lines)


def plot_comparison(results: Sequence[RunResult], out_path: Path) -> Path:
    """Validation loss per epoch of every run, one colour per configuration, restored epochs marked."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from lightning_reg.report import load_metrics

    colours = {"baseline": "tab:gray", "regularized": "tab:blue"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in results:
        m = load_metrics(r.log_dir).series
        c = colours.get(r.config, None)
        for ax, key in zip(axes, ("val_loss", "val_acc")):
            if key not in m:
                continue
            ep, vals = m[key].per_epoch()
            label = r.config if r.seed == results[0].seed else None
            ax.plot(ep, vals, color=c, alpha=0.8, linewidth=1.2, label=label)
            if r.best_epoch is not None and r.best_epoch in ep:
                ax.scatter(
                    [r.best_epoch], [vals[ep.index(r.best_epoch)]], color=c, marker="*", s=90, zorder=5
                )
    axes[0].set_yscale("log")
    axes[0].set_ylabel("validation loss (log scale)")
    axes[1].set_ylabel("validation accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(title="* = restored best epoch", fontsize=8)
    fig.suptitle("MNIST-1D: baseline vs regularized (every seed)")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def main(argv: Sequence[str] | None = None) -> list[RunResult]:
    p = argparse.ArgumentParser(
        prog="python -m example_projects.compare",
        description="Train MNIST-1D baseline and regularized for a few seeds; print a table, write plots.",
        epilog="Arguments after `--` are LightningCLI overrides passed to every run.",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help=f"configs in {CONFIG_DIR}")
    p.add_argument("--out", type=Path, default=Path("outputs/compare"))
    p.add_argument("--tiny", action="store_true", help="one seed, 2 epochs, tiny model: a smoke test")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: this model is too small to gain from more, and extra "
        "threads only contend on a busy machine)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1 :]
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.tiny:
        overrides = TINY_OVERRIDES + overrides
        if a.seeds == [0, 1, 2, 3, 4]:
            a.seeds = [0]
    from lightning_reg.report import render_report

    start = time.perf_counter()
    results: list[RunResult] = []
    for seed in a.seeds:
        for config in a.configs:
            print(f"[compare] {config}, seed {seed} ...", flush=True)
            results.append(run_one(config, seed, a.out, overrides))
            r = results[-1]
            print(
                f"[compare] {config}, seed {seed}: test acc {100 * r.test_acc:.1f}% in {r.seconds:.0f} s",
                flush=True,
            )
    total = time.perf_counter() - start

    table = summary_table(results)
    plots = {"comparison": str(plot_comparison(results, a.out / "compare.png"))}
    for config in a.configs:
        first = next(r for r in results if r.config == config)
        made = render_report(
            first.log_dir,
            a.out / "plots" / config,
            best_epoch=first.best_epoch,
            title=f"{config}, seed {first.seed}",
        )
        plots.update({f"{config}/{k}": str(v.path) for k, v in made.items()})
    (a.out / "summary.md").write_text(table + "\n")
    (a.out / "summary.json").write_text(
        json.dumps(
            {
                "runs": [asdict(r) for r in results],
                "total_seconds": total,
                "plots": plots,
                "overrides": overrides,
            },
            indent=2,
        )
    )
    print()
    print(table)
    print(f"\n{len(results)} runs in {total:.0f} s ({math.ceil(total / 60)} min). Plots:")
    for name, path in plots.items():
        print(f"  {name}: {path}")
    return results


if __name__ == "__main__":
    main()
