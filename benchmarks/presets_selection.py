"""How the presets' values were chosen: candidates, three settings, validation data only, then the test.

    PYTHONPATH=. python benchmarks/presets_selection.py select   [--jobs 2]   # validation only
    PYTHONPATH=. python benchmarks/presets_selection.py evaluate [--jobs 2]   # the fixed presets: val + test

The procedure (the documentation's presets page states it in words):

1. **Settings.** Three locally built settings of different kinds, each trained for a fixed number of
   epochs with AdamW and a per-step cosine learning rate (the optimizer and schedule are the user's, not
   part of a preset), each with a fixed data split (``split_seed=0``; the seed varies only the
   initialisation, the batch order and the random draws of the regularizers):

   * ``mnist1d``: the MNIST-1D project's 1-D ResNet (widths 16-32-64, two basic blocks per stage) on 500
     training / 500 validation signals (``(B, 1, 40)``, so CutMix cuts segments), 40 epochs;
   * ``digits``: scikit-learn's 8x8 digits with torchvision's ResNet-18 layout (``BasicBlock``, width 16,
     3x3 stem), 300 training / 360 validation images, batch 32, no augmentation, 40 epochs;
   * ``tabular``: scikit-learn's breast-cancer table with a 3x256 MLP (no residual blocks: drop-path is
     skipped; no spatial dimension: CutMix is skipped), 150 training / 150 validation rows, 60 epochs.

   The baseline of each setting is the same run without any preset (no weight decay, no early stopping:
   the final weights).

2. **Candidates.** Three candidate bundles per preset level (:data:`CANDIDATES`), ordered by strength;
   clipping (ZClip), the early-stopping patience (20 checks, best-weights restore on ``val_loss``) and the
   overfitting monitor are the same in all of them.

3. **Selection, on validation data only** (seeds :data:`SELECT_SEEDS`; ``select`` never evaluates
   anything on a test split). For each setting and candidate, the paired difference of validation
   accuracy against the baseline, seed by seed, with its 95 % t-interval. A candidate is *eligible* for
   a level when, in every setting, its interval's upper end is >= 0 (not significantly worse than the
   baseline anywhere).
   ``mild``: the eligible mild candidate with the largest *smallest* mean difference over the settings
   (a safe default). ``medium``: the eligible medium candidate with the largest mean difference averaged
   over the settings. ``strong``: the eligible strong candidate with the largest mean difference in the
   setting whose baseline overfits most (the largest rise of its validation loss from its minimum to its
   last epoch, averaged over seeds). Ties within 0.1 pp go to the weaker candidate (listed first). The
   chosen values are then written into ``lightning_reg/presets/registry.py`` by hand.

4. **Evaluation after the choice is fixed** (``evaluate``, fresh seeds :data:`EVAL_SEEDS`): baseline and
   the library's :data:`~lightning_reg.presets.PRESETS` in every setting; validation and test accuracy,
   paired differences with 95 % t-intervals. It refuses to run if the library's presets differ from the
   candidates the ``select`` result file chose.

Runs are appended to ``outputs/presets_selection/<phase>.jsonl`` as they finish (a rerun skips done
runs); the summaries go through ``benchmarks/harness.py``'s ``Report`` to
``benchmarks/results/presets_<phase>.json`` and ``docs/benchmarks/results/presets_<phase>.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_reg.presets.registry import PRESET_NAMES, PRESETS, Preset  # noqa: E402

SELECT_SEEDS = (0, 1, 2, 3, 4)
EVAL_SEEDS = (100, 101, 102, 103, 104, 105, 106, 107)
OUT = ROOT / "outputs" / "presets_selection"
TIE_PP = 0.1
_RUNS_NOTE = (
    "Every run in its own worker process with one torch thread (the environment line shows the driver's); "
    "each run is seeded and uses one thread."
)

# ------------------------------------------------------------------------------------------------ candidates
_BASE: dict[str, Any] = dict(clipping="zclip", patience=20, overfitting_warmup=5, overfitting_probe=0.25)


def _cand(name: str, **kw: Any) -> Preset:
    return Preset(name=name, **{**_BASE, **kw})


#: Candidate bundles per level, weakest first (ties go to the first).
CANDIDATES: dict[str, dict[str, Preset]] = {
    "mild": {
        "mild-a": _cand("mild", weight_decay=0.01),
        "mild-b": _cand("mild", weight_decay=0.05, label_smoothing=0.05, drop_path_rate=0.05),
        "mild-c": _cand("mild", weight_decay=0.05, label_smoothing=0.1, drop_path_rate=0.1),
    },
    "medium": {
        "medium-a": _cand(
            "medium", weight_decay=0.05, label_smoothing=0.1, mixup_prob=0.3, drop_path_rate=0.1
        ),
        "medium-b": _cand(
            "medium", weight_decay=0.1, label_smoothing=0.1, mixup_prob=0.5, drop_path_rate=0.1
        ),
        "medium-c": _cand(
            "medium",
            weight_decay=0.1,
            label_smoothing=0.1,
            mixup_prob=0.3,
            cutmix_prob=0.3,
            drop_path_rate=0.1,
        ),
    },
    "strong": {
        "strong-a": _cand(
            "strong",
            weight_decay=0.1,
            label_smoothing=0.1,
            mixup_prob=0.5,
            cutmix_prob=0.3,
            drop_path_rate=0.2,
        ),
        "strong-b": _cand(
            "strong",
            weight_decay=0.3,
            label_smoothing=0.1,
            mixup_prob=0.5,
            cutmix_prob=0.5,
            drop_path_rate=0.2,
        ),
        "strong-c": _cand(
            "strong", weight_decay=0.3, label_smoothing=0.15, mixup_prob=0.8, drop_path_rate=0.3
        ),
    },
}
ALL_CANDIDATES: dict[str, Preset] = {k: v for level in CANDIDATES.values() for k, v in level.items()}


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Setting:
    """One locally built setting: data, model, training length."""

    name: str
    description: str
    max_epochs: int
    make: Callable[[Preset | None], tuple[Any, Any]]
    branch_ends: dict[str, str] | None = None


def _cosine() -> Any:
    from lightning_reg import WarmupCosineLR

    return partial(WarmupCosineLR, warmup_steps=0)


def _mnist1d(preset: Preset | None) -> tuple[Any, Any]:
    from example_projects.mnist1d import MNIST1DDataModule, ResNet1dClassifier

    dm = MNIST1DDataModule(train_size=500, val_size=500, batch_size=64, channel_dim=True)
    model = ResNet1dClassifier(
        widths=(16, 32, 64), blocks_per_stage=2, lr=3e-3, lr_scheduler=_cosine(), preset=preset
    )  # type: ignore[arg-type]
    return dm, model


def _digits(preset: Preset | None) -> tuple[Any, Any]:
    from example_projects.digits import DigitsDataModule, DigitsResNet

    dm = DigitsDataModule(train_size=300, val_size=360, test_size=360, augment=False, batch_size=32)
    model = DigitsResNet(arch="resnet18", width=16, lr=1e-3, lr_scheduler=_cosine(), preset=preset)  # type: ignore[arg-type]
    return dm, model


def _tabular(preset: Preset | None) -> tuple[Any, Any]:
    from example_projects.tabular import TabularDataModule, TabularMLP

    dm = TabularDataModule("breast_cancer", train_size=150, val_size=150, test_size=169, batch_size=32)
    model = TabularMLP(hidden=256, depth=3, lr=1e-3, lr_scheduler=_cosine(), preset=preset)  # type: ignore[arg-type]
    return dm, model


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "mnist1d", "MNIST-1D, 1-D ResNet (16-32-64), 500 train", 40, _mnist1d, {"BasicBlock1d": "bn2"}
        ),
        Setting("digits", "8x8 digits, torchvision ResNet-18 layout (width 16), 300 train", 40, _digits),
        Setting("tabular", "breast cancer, 3x256 MLP, 150 train", 60, _tabular),
    )
}


# ------------------------------------------------------------------------------------------------ one run
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _evaluate(model: Any, loader: Any) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    loss = correct = total = 0.0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(-1) == y).sum())
            total += len(y)
    return correct / total, loss / total


def run_one(setting: str, config: str, seed: int, phase: str) -> dict[str, Any]:
    """Train one configuration with one seed; validation metrics always, test metrics only in ``evaluate``."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lightning_reg import preset_callbacks
    from tests.helpers import fast_trainer

    _init_worker()
    s = SETTINGS[setting]
    preset: Preset | None
    if config == "baseline":
        preset = None
    elif phase == "select":
        preset = ALL_CANDIDATES[config]
    else:
        preset = PRESETS[config]

    class Curve(Callback):
        def __init__(self) -> None:
            self.val_loss: list[float] = []

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self.val_loss.append(float(trainer.callback_metrics["val_loss"]))

    L.seed_everything(seed, verbose=False)
    dm, model = s.make(preset)
    curve = Curve()
    callbacks = [curve] + (preset_callbacks(preset, branch_ends=s.branch_ends, verbose=0) if preset else [])
    trainer = fast_trainer(max_epochs=s.max_epochs, accelerator="cpu", devices=1, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    from torch.utils.data import DataLoader

    val_acc, val_loss = _evaluate(model, DataLoader(dm.val_set, batch_size=256))
    record: dict[str, Any] = {
        "setting": setting,
        "config": config,
        "seed": seed,
        "phase": phase,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "epochs_run": trainer.current_epoch,
        "seconds": seconds,
        "val_loss_curve": curve.val_loss,
        "best_epoch": next((cb.best_epoch for cb in callbacks if hasattr(cb, "best_epoch")), None),
        "first_alert": next(
            (h["epoch"] for cb in callbacks for h in getattr(cb, "history", []) if h.get("alert")), None
        ),
        "preset": None if preset is None else preset.as_dict(),
    }
    if phase == "evaluate":  # never in `select`: the test split is not even loaded there
        dm.setup("test")
        record["test_acc"], record["test_loss"] = _evaluate(model, DataLoader(dm.test_set, batch_size=256))
    return record


# ------------------------------------------------------------------------------------------------ driver
def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_all(
    phase: str, configs: Sequence[str], seeds: Sequence[int], settings: Sequence[str], jobs: int
) -> list[dict[str, Any]]:
    """Run every (setting, config, seed) not yet in the phase's JSONL file; return all records."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{phase}.jsonl"
    records = _load(path)
    done = {(r["setting"], r["config"], r["seed"]) for r in records}
    todo = [(s, c, seed) for seed in seeds for s in settings for c in configs if (s, c, seed) not in done]
    print(
        f"[{phase}] {len(done)} runs done, {len(todo)} to run with {jobs} worker(s); log: {path}", flush=True
    )
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool, path.open("a") as fh:
        futures = {pool.submit(run_one, s, c, seed, phase): (s, c, seed) for s, c, seed in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            rec = fut.result()
            rec["load_average"] = round(os.getloadavg()[0], 2)  # 1-minute load when the run finished
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            records.append(rec)
            elapsed = time.perf_counter() - start
            print(
                f"[{phase}] {i}/{len(todo)} {rec['setting']} {rec['config']} seed {rec['seed']}: val acc "
                f"{100 * rec['val_acc']:.1f}% in {rec['seconds']:.0f} s ({elapsed / 60:.1f} min, load "
                f"{os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return records


def _load_note(records: Sequence[dict[str, Any]]) -> str:
    loads = [r["load_average"] for r in records if "load_average" in r]
    if not loads:
        return ""
    return (
        f" Load average (1 min) when the runs finished: {min(loads):.1f} to {max(loads):.1f} (a shared "
        "2-core machine); the environment line below is the load when this file was written."
    )


def _table(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    out: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["setting"], r["config"]), {})[r["seed"]] = r
    return out


def _diff(table: Any, setting: str, config: str, seeds: Sequence[int], key: str) -> Any:
    from example_projects.stats import paired_diff

    a = [table[(setting, config)][s][key] for s in seeds]
    b = [table[(setting, "baseline")][s][key] for s in seeds]
    return paired_diff(a, b)


def overfitting_rise(records: Sequence[dict[str, Any]], setting: str) -> float:
    """Mean over seeds of the baseline's last validation loss minus its minimum (how much it overfits)."""
    rises = [
        r["val_loss_curve"][-1] - min(r["val_loss_curve"])
        for r in records
        if r["setting"] == setting and r["config"] == "baseline"
    ]
    return statistics.fmean(rises)


def choose(records: Sequence[dict[str, Any]], seeds: Sequence[int] = SELECT_SEEDS) -> dict[str, Any]:
    """Apply the selection rules to validation records; return the chosen candidate per level and why."""
    table = _table(records)
    settings = list(SETTINGS)
    diffs = {(s, c): _diff(table, s, c, seeds, "val_acc") for s in settings for c in ALL_CANDIDATES}
    most_overfit = max(settings, key=lambda s: overfitting_rise(records, s))
    scores = {
        "mild": lambda c: min(diffs[(s, c)].mean for s in settings),
        "medium": lambda c: statistics.fmean(diffs[(s, c)].mean for s in settings),
        "strong": lambda c: diffs[(most_overfit, c)].mean,
    }
    chosen: dict[str, Any] = {"most_overfit_setting": most_overfit, "levels": {}}
    for level, cands in CANDIDATES.items():
        eligible = [c for c in cands if all(diffs[(s, c)].high >= 0 for s in settings)]
        pool = eligible or list(cands)
        best = None
        for c in pool:  # weakest first: a later one must beat the best by more than the tie margin
            if best is None or 100 * (scores[level](c) - scores[level](best)) > TIE_PP:
                best = c
        chosen["levels"][level] = {
            "candidate": best,
            "eligible": eligible,
            "scores_pp": {c: round(100 * scores[level](c), 3) for c in cands},
            "preset": ALL_CANDIDATES[best].as_dict(),  # type: ignore[index]
        }
    return chosen


def _report_select(records: Sequence[dict[str, Any]], command: str) -> dict[str, Any]:
    from harness import Report

    table = _table(records)
    chosen = choose(records)
    report = Report("presets_select", command, title="Preset selection: validation accuracy (no test data)")
    base_section = "baseline (no regularization)"
    diff_section = "candidate − baseline: validation accuracy, paired by seed, 95 % t-interval"
    for s in SETTINGS:
        base = [table[(s, "baseline")][seed]["val_acc"] for seed in SELECT_SEEDS]
        acc = f"{100 * statistics.fmean(base):.1f}% ± {100 * statistics.stdev(base):.1f}"
        report.add(base_section, "validation accuracy, mean ± std over seeds", acc, column=s)
        rise = overfitting_rise(records, s)
        report.add(base_section, "validation-loss rise after its minimum", rise, column=s)
    for c in ALL_CANDIDATES:
        mark = " (chosen)" if any(v["candidate"] == c for v in chosen["levels"].values()) else ""
        for s in SETTINGS:
            report.add(diff_section, f"{c}{mark}", _diff(table, s, c, SELECT_SEEDS, "val_acc").pp(), column=s)
    for level, v in chosen["levels"].items():
        scores = ", ".join(f"{c} {pp:+.2f}" for c, pp in v["scores_pp"].items())
        report.add("choice", level, v["candidate"], column="chosen")
        report.add("choice", level, ", ".join(v["eligible"]) or "none", column="eligible")
        report.add("choice", level, scores, column="score (pp)")
    report.note(
        f"Seeds {list(SELECT_SEEDS)}; strong is scored in the most overfitting setting: "
        f"{chosen['most_overfit_setting']}. Rules: benchmarks/presets_selection.py docstring. {_RUNS_NOTE}"
        + _load_note(records)
    )
    report.save()
    (ROOT / "benchmarks" / "results" / "presets_choice.json").write_text(json.dumps(chosen, indent=2) + "\n")
    return chosen


def _report_evaluate(records: Sequence[dict[str, Any]], command: str) -> None:
    from harness import Report

    table = _table(records)
    report = Report(
        "presets_evaluate",
        command,
        title="Presets after the choice was fixed: validation and test accuracy (fresh seeds)",
    )
    rows = {c: {s: [table[(s, c)][seed] for seed in EVAL_SEEDS] for s in SETTINGS}
            for c in ("baseline", *PRESET_NAMES)}  # fmt: skip
    for key, which in (("val_acc", "validation"), ("test_acc", "test")):
        for c, per_setting in rows.items():
            for s, rs in per_setting.items():
                xs = [r[key] for r in rs]
                acc = f"{100 * statistics.fmean(xs):.1f}% ± {100 * statistics.stdev(xs):.1f}"
                report.add(f"{which} accuracy, mean ± std over seeds", c, acc, column=s)
    for key, which in (("val_acc", "validation"), ("test_acc", "test")):
        section = f"preset − baseline, {which} accuracy: paired by seed, 95 % t-interval"
        for c in PRESET_NAMES:
            for s in SETTINGS:
                d = _diff(table, s, c, EVAL_SEEDS, key)
                report.add(section, c, d.pp(), column=s, summary="presets" if key == "test_acc" else False)
    for c, per_setting in rows.items():
        for s, rs in per_setting.items():
            epochs = statistics.fmean(r["epochs_run"] for r in rs)
            seconds = statistics.fmean(r["seconds"] for r in rs)
            report.add("epochs run / time per run", c, f"{epochs:.0f} / {seconds:.0f} s", column=s)
    report.note(
        f"Seeds {list(EVAL_SEEDS)} (none of them used in the selection). Mean ± sample std over seeds. "
        + _RUNS_NOTE
        + _load_note(records)
    )
    report.save()


def _check_fixed(chosen_path: Path) -> None:
    chosen = json.loads(chosen_path.read_text())
    for level, v in chosen["levels"].items():
        want = {k: val for k, val in v["preset"].items() if k != "summary"}
        have = {k: val for k, val in PRESETS[level].as_dict().items() if k != "summary"}
        if want != have:
            raise SystemExit(
                f"lightning_reg's preset {level!r} differs from the selected candidate "
                f"{v['candidate']!r}: {have} vs {want}. Fix core.py or rerun `select`."
            )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("phase", choices=["select", "evaluate"])
    p.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS))
    p.add_argument("--report-only", action="store_true", help="summarise the JSONL file, run nothing")
    a = p.parse_args(argv)
    command = f"PYTHONPATH=. python benchmarks/presets_selection.py {a.phase} --jobs 2"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if a.phase == "select":
        configs = ["baseline", *ALL_CANDIDATES]
        records = (
            _load(OUT / "select.jsonl")
            if a.report_only
            else run_all("select", configs, SELECT_SEEDS, a.settings, a.jobs)
        )
        chosen = _report_select(records, command)
        print(json.dumps({k: v["candidate"] for k, v in chosen["levels"].items()}))
    else:
        _check_fixed(ROOT / "benchmarks" / "results" / "presets_choice.json")
        configs = ["baseline", *PRESET_NAMES]
        records = (
            _load(OUT / "evaluate.jsonl")
            if a.report_only
            else run_all("evaluate", configs, EVAL_SEEDS, a.settings, a.jobs)
        )
        _report_evaluate(records, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
