"""The presets panel: ten settings, presets chosen on four of them, judged on the other six.

    PYTHONPATH=. python benchmarks/panel.py select   [--jobs 2]   # selection half, validation data only
    PYTHONPATH=. python benchmarks/panel.py heldout  [--jobs 2]   # held-out half: presets, hand recipe,
                                                                  # the finder; test accuracy
    PYTHONPATH=. python benchmarks/panel.py calibrate             # one run per setting: seconds per run

**The settings** (``SETTINGS``; every dataset built locally or shipped in a package, fixed splits):

=====================  ========  ==========================================  ======  =====  ==========
setting                half      model, data                                 train   epochs optimizer
=====================  ========  ==========================================  ======  =====  ==========
``mnist1d-resnet``     select    1-D ResNet (residual), MNIST-1D             500     40     AdamW
``digits-resnet``      select    torchvision ResNet-18 layout, 8x8 digits    300     40     SGD
``tabular-mlp``        select    3x256 MLP, breast-cancer table              150     60     AdamW
``tokens-transformer`` select    2-layer transformer, token sequences        1000    60     AdamW
``mnist1d-cnn``        held-out  plain 1-D CNN (no residual), MNIST-1D       1000    150    AdamW
``mnist1d-mlp``        held-out  2x256 MLP, MNIST-1D                         1000    150    AdamW
``digits-vit``         held-out  torchvision ViT from a config, 8x8 digits   1000    60     AdamW
``synthetic-tabular``  held-out  3x512 MLP, make_classification (4 classes)  3000    30     SGD
``tokens-bert``        held-out  HF BERT from a config, first-half tokens    800     40     AdamW
``tokens-gru``         held-out  GRU (recurrent), the marker that comes last  600     60     AdamW
=====================  ========  ==========================================  ======  =====  ==========

``tokens-bert`` joined the held-out half in the second round (see the presets page, "Rounds"): it was
built, and judged once, after the first round's held-out results had been seen. ``tokens-gru`` joined in
the third round: built after every other result had been seen, and judged once.

Every run uses a per-step cosine learning rate (the optimizer and its schedule are the user's, not part of
a preset). The seed varies the initialisation, the batch order and the regularizers' random draws.

**The configurations** compared in each setting:

* ``none``: no regularization (no weight decay, no dropout, no clipping), the last epoch's weights;
* ``hand``: the four-line hand recipe: dropout 0.3 (models that take ``dropout``), weight decay 0.1
  (AdamW; ``5e-4`` with SGD, whose weight decay is an L2 term), ``gradient_clip_val=1.0``, and the
  weights of the best validation-accuracy epoch;
* ``mild``, ``medium``, ``strong``: ``RegularizedModule(preset=..., num_classes=K)`` and
  ``preset_callbacks(..., num_classes=K)``, nothing else (the library's presets as a user gets them);
* ``finder`` (held-out half only): ``find_regularization`` on the setting's validation data with the
  default budget (10 full-run equivalents) and objective ``val_acc``; its choice is then trained on the
  held-out seeds like the others.

**Selection** (``select``; the test split is never loaded): the candidates of ``CANDIDATES`` and ``none``
on the four selection settings, seeds ``SELECT_SEEDS``, paired differences of validation accuracy against
``none``. A candidate is eligible for its level when its 95 % interval's upper end is >= 0 in every
selection setting; ``mild`` takes the eligible candidate with the largest smallest mean difference,
``medium`` the largest mean difference over the settings, ``strong`` the largest difference in the setting
whose baseline overfits most (largest rise of validation loss from its minimum to the last epoch). The
chosen values are written into ``lightning_reg/presets/registry.py`` by hand; ``heldout`` refuses to run
when the library's presets differ from the choice.

**Held-out judgement** (``heldout``): every configuration on the held-out settings, seeds
``HELDOUT_SEEDS``; test accuracy of the weights each run returns, paired differences by seed with 95 %
t-intervals.

Runs are appended to ``outputs/panel/<phase>.jsonl`` as they finish (a rerun skips the done ones); the
tables go through ``benchmarks/harness.py``'s ``Report`` to ``benchmarks/results/panel_<phase>.json`` and
``docs/benchmarks/results/panel_<phase>.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_reg.presets.registry import PRESET_NAMES, PRESETS, Preset  # noqa: E402

SELECT_SEEDS = (0, 1, 2)
HELDOUT_SEEDS = (100, 101, 102, 103, 104)
FINDER_SEED = 0
OUT = ROOT / "outputs" / "panel"
TIE_PP = 0.1


# ---------------------------------------------------------------------------------------------- candidates
_BASE: dict[str, Any] = dict(clipping="zclip", patience=0.25, overfitting_warmup=5, overfitting_probe=0.25)


def _cand(name: str, **kw: Any) -> Preset:
    return Preset(name=name, **{**_BASE, **kw})


#: Candidate bundles per level, weakest first (ties go to the first).
CANDIDATES: dict[str, dict[str, Preset]] = {
    "mild": {
        "mild-a": _cand("mild", weight_decay=0.05, drop_path_rate=0.05, dropout_rate=0.1),
        "mild-b": _cand("mild", weight_decay=0.1, label_smoothing=0.1, drop_path_rate=0.1, dropout_rate=0.2),
    },
    "medium": {
        "medium-a": _cand(
            "medium", weight_decay=0.1, label_smoothing=0.1, drop_path_rate=0.15, dropout_rate=0.3
        ),
        "medium-b": _cand(
            "medium",
            weight_decay=0.1,
            label_smoothing=0.1,
            mixup_prob=0.2,
            drop_path_rate=0.1,
            dropout_rate=0.3,
        ),
    },
    "strong": {
        "strong-a": _cand(
            "strong",
            weight_decay=0.2,
            label_smoothing=0.1,
            mixup_prob=0.3,
            drop_path_rate=0.2,
            dropout_rate=0.4,
        ),
        "strong-b": _cand(
            "strong",
            weight_decay=0.3,
            label_smoothing=0.15,
            mixup_prob=0.5,
            drop_path_rate=0.3,
            dropout_rate=0.5,
        ),
    },
}
ALL_CANDIDATES: dict[str, Preset] = {k: v for level in CANDIDATES.values() for k, v in level.items()}


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Setting:
    """One locally built setting: data, model class and arguments, training length, optimizer."""

    name: str
    half: str  # "select" or "heldout"
    description: str
    max_epochs: int
    optimizer: str  # "adamw" or "sgd"
    lr: float
    data: Callable[[], Any]
    model: Callable[[], type]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    takes_dropout: bool = False
    branch_ends: dict[str, str] | None = None
    num_classes: int = 10


def _mnist1d_data(train: int) -> Callable[[], Any]:
    def make() -> Any:
        from example_projects.mnist1d import MNIST1DDataModule

        return MNIST1DDataModule(train_size=train, val_size=500, batch_size=64, channel_dim=True)

    return make


def _mnist1d_flat_data(train: int) -> Callable[[], Any]:
    def make() -> Any:
        from example_projects.mnist1d import MNIST1DDataModule

        return MNIST1DDataModule(train_size=train, val_size=500, batch_size=64)

    return make


def _digits_data(train: int, val: int, test: int, batch: int) -> Callable[[], Any]:
    def make() -> Any:
        from example_projects.digits import DigitsDataModule

        return DigitsDataModule(
            train_size=train, val_size=val, test_size=test, augment=False, batch_size=batch
        )

    return make


def _tabular_data() -> Any:
    from example_projects.tabular import TabularDataModule

    return TabularDataModule("breast_cancer", train_size=150, val_size=150, test_size=169, batch_size=32)


def _cls(module: str, name: str) -> Callable[[], type]:
    def load() -> type:
        import importlib

        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]

    return load


def _panel(name: str) -> Callable[[], Any]:
    def make() -> Any:
        from benchmarks import panel_models

        return getattr(panel_models, name)()

    return make


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "mnist1d-resnet",
            "select",
            "1-D ResNet (16-32-64, residual), MNIST-1D, 500 train",
            40,
            "adamw",
            3e-3,
            _mnist1d_data(500),
            _cls("example_projects.mnist1d", "ResNet1dClassifier"),
            {"widths": (16, 32, 64), "blocks_per_stage": 2},
            branch_ends={"BasicBlock1d": "bn2"},
        ),
        Setting(
            "digits-resnet",
            "select",
            "torchvision ResNet-18 layout (width 16), 8x8 digits, 300 train",
            40,
            "sgd",
            0.05,
            _digits_data(300, 360, 360, 32),
            _cls("example_projects.digits", "DigitsResNet"),
            {"arch": "resnet18", "width": 16},
        ),
        Setting(
            "tabular-mlp",
            "select",
            "3x256 MLP, breast-cancer table, 150 train",
            60,
            "adamw",
            1e-3,
            _tabular_data,
            _cls("example_projects.tabular", "TabularMLP"),
            {"hidden": 256, "depth": 3},
            takes_dropout=True,
            num_classes=2,
        ),
        Setting(
            "tokens-transformer",
            "select",
            "2-layer transformer encoder, token sequences, 1000 train",
            60,
            "adamw",
            1e-3,
            _panel("token_sequences"),
            _cls("benchmarks.panel_models", "TokenTransformer"),
            takes_dropout=True,
            num_classes=4,
        ),
        Setting(
            "mnist1d-cnn",
            "heldout",
            "plain 1-D CNN (no residual), MNIST-1D, 1000 train",
            150,
            "adamw",
            1e-3,
            _mnist1d_data(1000),
            _cls("benchmarks.panel_models", "CNN1dClassifier"),
            takes_dropout=True,
        ),
        Setting(
            "mnist1d-mlp",
            "heldout",
            "2x256 MLP, MNIST-1D, 1000 train",
            150,
            "adamw",
            1e-3,
            _mnist1d_flat_data(1000),
            _cls("example_projects.mnist1d", "MLPClassifier"),
            {"hidden": 256, "depth": 2},
            takes_dropout=True,
        ),
        Setting(
            "digits-vit",
            "heldout",
            "torchvision ViT (4 layers, width 64) from a config, 8x8 digits, 1000 train",
            60,
            "adamw",
            1e-3,
            _digits_data(1000, 400, 397, 64),
            _cls("benchmarks.panel_models", "DigitsViT"),
            takes_dropout=True,
        ),
        Setting(
            "synthetic-tabular",
            "heldout",
            "3x512 MLP, make_classification (40 features, 4 classes), 3000 train",
            30,
            "sgd",
            0.05,
            _panel("synthetic_tabular"),
            _cls("example_projects.tabular", "TabularMLP"),
            {"in_features": 40, "num_classes": 4, "hidden": 512, "depth": 3},
            takes_dropout=True,
            num_classes=4,
        ),
        Setting(
            "tokens-bert",
            "heldout",
            "Hugging Face BERT (2 layers, width 64) from a config, first-half token counts, 800 train",
            40,
            "adamw",
            1e-3,
            _panel("first_half_tokens"),
            _cls("benchmarks.panel_models", "TokenBert"),
            takes_dropout=True,
            num_classes=3,
        ),
        Setting(
            "tokens-gru",
            "heldout",
            "GRU (width 64) over token sequences, the marker that comes last, 600 train",
            60,
            "adamw",
            3e-3,
            _panel("last_marker_tokens"),
            _cls("benchmarks.panel_models", "TokenGRU"),
            takes_dropout=True,
            num_classes=3,
        ),
    )
}


# ------------------------------------------------------------------------------------------------ one run
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    for name in ("lightning.pytorch", "lightning.fabric", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _optimizer(s: Setting) -> Any:
    import torch

    if s.optimizer == "sgd":
        return partial(torch.optim.SGD, momentum=0.9)
    return torch.optim.AdamW


def _module_kwargs(s: Setting) -> dict[str, Any]:
    from lightning_reg import WarmupCosineLR

    return {
        **s.model_kwargs,
        "optimizer": _optimizer(s),
        "lr": s.lr,
        "lr_scheduler": partial(WarmupCosineLR, warmup_steps=0),
    }


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


class _BestValAcc:
    """The hand recipe's "keep the best validation-accuracy epoch", as a user writes it (a Callback)."""

    def __new__(cls) -> Any:
        from lightning.pytorch.callbacks import Callback

        class BestValAcc(Callback):
            def __init__(self) -> None:
                self.best = -1.0
                self.state: dict[str, Any] | None = None
                self.best_epoch = -1

            def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                acc = float(trainer.callback_metrics["val_acc"])
                if acc > self.best:
                    self.best, self.best_epoch = acc, trainer.current_epoch
                    self.state = copy.deepcopy(pl_module.state_dict())

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                if self.state is not None:
                    pl_module.load_state_dict(self.state)

        return BestValAcc()


def _choice_path(setting: str) -> Path:
    return OUT / f"finder_{setting}.json"


def build_run(s: Setting, config: str, phase: str) -> tuple[Any, list[Any], dict[str, Any]]:
    """Return ``(model, callbacks, extra Trainer arguments)`` of one configuration in one setting."""
    from lightning_reg import preset_callbacks

    model_cls = s.model()
    kwargs = _module_kwargs(s)
    sgd = s.optimizer == "sgd"
    if config == "none":
        if s.takes_dropout:
            kwargs["dropout"] = 0.0
        return model_cls(**kwargs, weight_decay=0.0), [], {}
    if config == "hand":
        if s.takes_dropout:
            kwargs["dropout"] = 0.3
        model = model_cls(**kwargs, weight_decay=5e-4 if sgd else 0.1)
        return model, [_BestValAcc()], {"gradient_clip_val": 1.0}
    monitor, mode, model_args = None, None, {}
    if config == "finder":
        choice = json.loads(_choice_path(s.name).read_text())
        preset = Preset(**choice["preset"])
        monitor, mode, model_args = choice["monitor"], choice["mode"], choice["model_args"]
    elif phase == "select":
        preset = ALL_CANDIDATES[config]
    else:
        preset = PRESETS[config]
    model = model_cls(**kwargs, **model_args, preset=preset)
    cbs = preset_callbacks(
        preset, monitor=monitor, mode=mode, num_classes=s.num_classes, branch_ends=s.branch_ends, verbose=0
    )
    return model, cbs, {}


def run_one(setting: str, config: str, seed: int, phase: str) -> dict[str, Any]:
    """Train one configuration with one seed; validation metrics always, test metrics only in ``heldout``."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader

    from tests.helpers import fast_trainer

    _init_worker()
    s = SETTINGS[setting]

    class Curve(Callback):
        def __init__(self) -> None:
            self.val_loss: list[float] = []
            self.val_acc: list[float] = []

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self.val_loss.append(round(float(trainer.callback_metrics["val_loss"]), 5))
                self.val_acc.append(round(float(trainer.callback_metrics["val_acc"]), 5))

    L.seed_everything(seed, verbose=False)
    dm = s.data()
    model, callbacks, trainer_args = build_run(s, config, phase)
    curve = Curve()
    trainer = fast_trainer(
        max_epochs=s.max_epochs, accelerator="cpu", devices=1, callbacks=[curve, *callbacks], **trainer_args
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    dm.setup("fit")
    val_acc, val_loss = _evaluate(model, DataLoader(dm.val_set, batch_size=256))
    record: dict[str, Any] = {
        "setting": setting,
        "config": config,
        "seed": seed,
        "phase": phase,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "epochs_run": trainer.current_epoch,
        "seconds": round(seconds, 2),
        "val_loss_curve": curve.val_loss,
        "val_acc_curve": curve.val_acc,
        "best_epoch": next((cb.best_epoch for cb in callbacks if hasattr(cb, "best_epoch")), None),
        "patience": next((cb.patience for cb in callbacks if hasattr(cb, "patience_fraction")), None),
    }
    if phase == "heldout":  # never in `select`: the test split is not even loaded there
        dm.setup("test")
        record["test_acc"], record["test_loss"] = _evaluate(model, DataLoader(dm.test_set, batch_size=256))
    return record


def run_finder(setting: str) -> dict[str, Any]:
    """Run the finder on one held-out setting (validation data only) and save its choice."""
    from lightning_reg.find import find_regularization

    _init_worker()
    s = SETTINGS[setting]
    start = time.perf_counter()
    result = find_regularization(
        s.model(),
        s.data(),
        model_kwargs=_module_kwargs(s),
        trainer_kwargs={"max_epochs": s.max_epochs, "accelerator": "cpu"},
        metric="val_acc",
        mode="max",
        seeds=0,
        seed=FINDER_SEED,
        branch_ends=s.branch_ends,
        out=OUT / f"finder_{setting}",
        verbose=1,
    )
    c = result.choice
    choice = {
        "setting": setting,
        "preset": c.preset.as_dict(),
        "monitor": c.monitor,
        "mode": c.mode,
        "model_args": dict(c.model_args),
        "describe": c.describe(),
        "search_cost": result.search_cost,
        "trials": len(result.trials),
        "pruned": sum(1 for t in result.trials if t.state == "PRUNED"),
        "choice_value": result.choice_value,
        "seconds": round(time.perf_counter() - start, 1),
    }
    _choice_path(setting).write_text(json.dumps(choice, indent=1))
    return choice


# ------------------------------------------------------------------------------------------------ driver
def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pool(jobs: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker)


def run_all(phase: str, tasks: Sequence[tuple[str, str, int]], jobs: int) -> list[dict[str, Any]]:
    """Run every ``(setting, config, seed)`` not yet in the phase's JSONL file; return all records."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{phase}.jsonl"
    records = _load(path)
    done = {(r["setting"], r["config"], r["seed"]) for r in records}
    todo = [t for t in tasks if t not in done]
    # longest settings first, so the two workers end together
    todo.sort(key=lambda t: -SETTINGS[t[0]].max_epochs)
    print(
        f"[{phase}] {len(done)} runs done, {len(todo)} to run with {jobs} worker(s); log: {path}", flush=True
    )
    start = time.perf_counter()
    with _pool(jobs) as pool, path.open("a") as fh:
        futures = {pool.submit(run_one, s, c, seed, phase): (s, c, seed) for s, c, seed in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            rec = fut.result()
            rec["load_average"] = round(os.getloadavg()[0], 2)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            records.append(rec)
            print(
                f"[{phase}] {i}/{len(todo)} {rec['setting']} {rec['config']} seed {rec['seed']}: val acc "
                f"{100 * rec['val_acc']:.1f}%"
                + (f", test {100 * rec['test_acc']:.1f}%" if "test_acc" in rec else "")
                + f", {rec['epochs_run']} epochs in {rec['seconds']:.0f} s "
                f"({(time.perf_counter() - start) / 60:.1f} min)",
                flush=True,
            )
    return records


def _by(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    out: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["setting"], r["config"]), {})[r["seed"]] = r
    return out


def _paired(table: Any, setting: str, a: str, b: str, seeds: Sequence[int], key: str) -> Any:
    from lightning_reg.find.stats import paired_difference

    xs = [100 * table[(setting, a)][s][key] for s in seeds]
    ys = [100 * table[(setting, b)][s][key] for s in seeds]
    return paired_difference(xs, ys)


def overfitting_rise(records: Sequence[dict[str, Any]], setting: str) -> float:
    """Mean rise of the baseline's validation loss from its minimum to its last epoch."""
    rises = [
        r["val_loss_curve"][-1] - min(r["val_loss_curve"])
        for r in records
        if r["setting"] == setting and r["config"] == "none" and r["val_loss_curve"]
    ]
    return statistics.fmean(rises) if rises else 0.0


def choose(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Apply the selection rule to the ``select`` records."""
    table = _by(records)
    settings = [n for n, s in SETTINGS.items() if s.half == "select"]
    most = max(settings, key=lambda n: overfitting_rise(records, n))
    chosen: dict[str, Any] = {"most_overfit_setting": most, "levels": {}}
    for level, cands in CANDIDATES.items():
        diffs = {
            c: {n: _paired(table, n, c, "none", SELECT_SEEDS, "val_acc") for n in settings} for c in cands
        }
        eligible = [c for c in cands if all(d.high >= 0 for d in diffs[c].values())] or list(cands)
        if level == "mild":
            score = {c: min(d.mean for d in diffs[c].values()) for c in eligible}
        elif level == "medium":
            score = {c: statistics.fmean(d.mean for d in diffs[c].values()) for c in eligible}
        else:
            score = {c: diffs[c][most].mean for c in eligible}
        best = max(score.values())
        pick = next(c for c in eligible if score[c] >= best - TIE_PP)
        chosen["levels"][level] = {
            "candidate": pick,
            "eligible": eligible,
            "score": {c: round(v, 3) for c, v in score.items()},
            "preset": ALL_CANDIDATES[pick].as_dict(),
        }
    return chosen


def _fmt(d: Any) -> str:
    return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]"


def report_select(records: Sequence[dict[str, Any]], command: str) -> dict[str, Any]:
    from benchmarks.harness import Report

    table = _by(records)
    chosen = choose(records)
    rep = Report(
        "panel_select",
        command,
        title="Preset selection on the panel's selection half: validation accuracy (no test data)",
    )
    settings = [n for n, s in SETTINGS.items() if s.half == "select"]
    for n in settings:
        base = [100 * table[(n, "none")][s]["val_acc"] for s in SELECT_SEEDS]
        rep.add(
            "validation accuracy, difference to no regularization (pp)",
            n,
            f"{statistics.fmean(base):.1f} %",
            column="none",
        )
        for c in ALL_CANDIDATES:
            rep.add(
                "validation accuracy, difference to no regularization (pp)",
                n,
                _fmt(_paired(table, n, c, "none", SELECT_SEEDS, "val_acc")),
                column=c,
            )
    for level, info in chosen["levels"].items():
        rep.add("choice", level, info["candidate"], column="chosen")
        rep.add("choice", level, ", ".join(info["eligible"]), column="eligible")
    rep.note(
        f"Seeds {list(SELECT_SEEDS)}, paired by seed; 95 % t-intervals. The most overfitting baseline (the"
        f" strong level's setting) is {chosen['most_overfit_setting']}. Candidates: "
        + "; ".join(f"{k}: {_short(p)}" for k, p in ALL_CANDIDATES.items())
    )
    rep.save()
    (ROOT / "benchmarks" / "results" / "panel_choice.json").write_text(json.dumps(chosen, indent=1) + "\n")
    return chosen


def _short(p: Preset) -> str:
    parts = [f"wd {p.weight_decay:g}"]
    for key, label in (
        ("label_smoothing", "ls"),
        ("mixup_prob", "mixup"),
        ("cutmix_prob", "cutmix"),
        ("drop_path_rate", "drop-path"),
        ("dropout_rate", "dropout"),
    ):
        if getattr(p, key):
            parts.append(f"{label} {getattr(p, key):g}")
    parts.append(f"patience {p.patience:g}")
    return " ".join(parts)


HELDOUT_CONFIGS = ("none", "hand", *PRESET_NAMES, "finder")


def report_heldout(records: Sequence[dict[str, Any]], command: str) -> None:
    from benchmarks.harness import Report

    table = _by(records)
    rep = Report(
        "panel_heldout",
        command,
        title="Held-out half of the panel: test accuracy of the weights each run returns (5 seeds, paired)",
    )
    settings = [n for n, s in SETTINGS.items() if s.half == "heldout"]
    for n in settings:
        have = [c for c in HELDOUT_CONFIGS if (n, c) in table and len(table[(n, c)]) == len(HELDOUT_SEEDS)]
        for c in have:
            accs = [100 * table[(n, c)][s]["test_acc"] for s in HELDOUT_SEEDS]
            rep.add(
                "test accuracy (%), mean and sd over seeds",
                n,
                f"{statistics.fmean(accs):.1f} ± {statistics.stdev(accs):.1f}",
                column=c,
            )
            if c != "none":  # one row per configuration, one column per setting: a 3-5 row card summary
                rep.add(
                    "difference to no regularization (pp)",
                    c,
                    _fmt(_paired(table, n, c, "none", HELDOUT_SEEDS, "test_acc")),
                    column=n,
                    summary="presets",
                )
            if c not in ("none", "hand"):
                rep.add(
                    "difference to the hand recipe (pp)",
                    n,
                    _fmt(_paired(table, n, c, "hand", HELDOUT_SEEDS, "test_acc")),
                    column=c,
                )
        for c in have:  # what a validation-only choice can see: the same runs on the validation split
            vals = [100 * table[(n, c)][s]["val_acc"] for s in HELDOUT_SEEDS]
            rep.add("validation accuracy (%), mean over seeds", n, f"{statistics.fmean(vals):.1f}", column=c)
        for c in have:
            epochs = [table[(n, c)][s]["epochs_run"] for s in HELDOUT_SEEDS]
            rep.add("epochs trained (mean)", n, f"{statistics.fmean(epochs):.0f}", column=c)
    _targets(rep, records, table, settings)
    _finder_summary(rep, table, settings)
    for n in settings:
        path = _choice_path(n)
        if path.exists():
            ch = json.loads(path.read_text())
            rep.add("the finder", n, ch["describe"], column="choice")
            rep.add("the finder", n, f"{ch['search_cost']:.2f}", column="search cost (full runs)")
            rep.add("the finder", n, f"{ch['trials']} ({ch['pruned']} pruned)", column="trials")
    rep.note(
        f"Seeds {list(HELDOUT_SEEDS)}; differences are paired by seed with 95 % t-intervals. The finder"
        f" searched on seed {FINDER_SEED} with validation data only; its choice was then trained on the"
        " held-out seeds."
    )
    rep.save()


#: The preset the documentation recommends when a model overfits (the demo's; judged against the hand recipe).
RECOMMENDED = "medium"


def _held_out_diff(table: Any, n: str) -> Callable[[str, str], Any] | None:
    """``(a, b) -> paired test-accuracy difference`` in setting ``n``; ``None`` until every run is in."""
    if not all((n, c) in table and len(table[(n, c)]) == len(HELDOUT_SEEDS) for c in HELDOUT_CONFIGS):
        return None
    return lambda a, b: _paired(table, n, a, b, HELDOUT_SEEDS, "test_acc")


#: A baseline "overfits" when its last validation loss is this much above its minimum (relative, seed mean).
OVERFIT_RISE = 0.10


def _targets(rep: Any, records: Sequence[dict[str, Any]], table: Any, settings: Sequence[str]) -> None:
    """The issue's targets, one row each per held-out setting, with a pass / fail verdict."""
    section = "targets, per held-out setting"
    for n in settings:
        diff = _held_out_diff(table, n)
        if diff is None:
            continue

        worst = min(PRESET_NAMES, key=lambda c: diff(c, "none").high)
        rep.add(
            section,
            n,
            f"{worst}: {_fmt(diff(worst, 'none'))}",
            column="every preset not below none beyond noise (lowest upper end)",
            passed=diff(worst, "none").high >= 0,
        )
        rep.add(
            section,
            n,
            _fmt(diff(RECOMMENDED, "hand")),
            column=f"{RECOMMENDED} at or above the hand recipe",
            passed=diff(RECOMMENDED, "hand").mean >= 0,
        )
        best = max(PRESET_NAMES, key=lambda c: diff(c, "none").mean)
        vs_best, vs_hand = diff("finder", best), diff("finder", "hand")
        rep.add(
            section,
            n,
            f"{best}: {_fmt(vs_best)}; hand: {_fmt(vs_hand)}",
            column="finder at or above the best preset and the hand recipe",
            passed=vs_best.mean >= 0 and vs_hand.mean >= 0,
        )
        rises = [
            (r["val_loss_curve"][-1] - min(r["val_loss_curve"])) / min(r["val_loss_curve"])
            for r in records
            if r["setting"] == n and r["config"] == "none" and r["val_loss_curve"]
        ]
        rise = statistics.fmean(rises)
        overfits = rise >= OVERFIT_RISE
        vs_none = diff("finder", "none")
        why = "" if overfits else "; the baseline does not overfit: no target"
        rep.add(
            section,
            n,
            f"{_fmt(vs_none)} (baseline's validation loss ends {100 * rise:.0f} % above its minimum{why})",
            column="finder above none, interval excluding 0, where the baseline overfits",
            passed=vs_none.low > 0 if overfits else None,
        )


def _finder_summary(rep: Any, table: Any, settings: Sequence[str]) -> None:
    """The finder card's summary: its choice against no regularization, the best preset, the hand recipe."""
    section = "the finder's choice against the others: test accuracy difference (pp)"
    for n in settings:
        diff = _held_out_diff(table, n)
        if diff is None:
            continue

        best = max(PRESET_NAMES, key=lambda c: diff(c, "none").mean)
        # one row per comparison, one column per setting: a 3-5 row card summary
        rep.add(section, "finder - none", _fmt(diff("finder", "none")), column=n, summary="finder")
        best_text = f"{_fmt(diff('finder', best))} ({best})"
        rep.add(section, "finder - best preset", best_text, column=n, summary="finder")
        rep.add(section, "finder - hand recipe", _fmt(diff("finder", "hand")), column=n, summary="finder")
        ch = json.loads(_choice_path(n).read_text())
        cost = f"{ch['search_cost']:.2f}"
        rep.add(section, "search (full runs)", cost, column=n, summary="finder")


def _check_fixed() -> None:
    path = ROOT / "benchmarks" / "results" / "panel_choice.json"
    if not path.exists():
        raise SystemExit("run `select` first: no benchmarks/results/panel_choice.json")
    chosen = json.loads(path.read_text())
    for level, info in chosen["levels"].items():
        lib = PRESETS[level].as_dict()
        want = dict(info["preset"])
        diff = {k: (lib[k], v) for k, v in want.items() if k not in ("summary",) and lib.get(k) != v}
        if diff:
            raise SystemExit(
                f"the library's preset {level!r} differs from the chosen candidate {info['candidate']!r}: "
                f"{diff} (library, chosen); write the choice into lightning_reg/presets/registry.py"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=("select", "heldout", "calibrate", "finder"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--settings", nargs="*", default=None)
    args = parser.parse_args(argv)
    command = "PYTHONPATH=. python benchmarks/panel.py " + " ".join(argv or sys.argv[1:])
    if args.phase == "calibrate":
        names = args.settings or list(SETTINGS)
        with _pool(args.jobs) as pool:
            futs = {pool.submit(run_one, n, "none", 0, "calibrate"): n for n in names}
            for fut in as_completed(futs):
                r = fut.result()
                print(f"{r['setting']}: {r['seconds']:.1f} s, val acc {100 * r['val_acc']:.1f}%", flush=True)
        return 0
    if args.phase == "select":
        settings = args.settings or [n for n, s in SETTINGS.items() if s.half == "select"]
        tasks = [(n, c, seed) for seed in SELECT_SEEDS for n in settings for c in ("none", *ALL_CANDIDATES)]
        records = run_all("select", tasks, args.jobs)
        chosen = report_select(records, command)
        print(json.dumps({k: v["candidate"] for k, v in chosen["levels"].items()}))
        return 0
    settings = args.settings or [n for n, s in SETTINGS.items() if s.half == "heldout"]
    if args.phase == "finder":
        OUT.mkdir(parents=True, exist_ok=True)
        todo = [n for n in settings if not _choice_path(n).exists()]
        with _pool(args.jobs) as pool:
            for fut in as_completed([pool.submit(run_finder, n) for n in todo]):
                ch = fut.result()
                print(
                    f"[finder] {ch['setting']}: {ch['describe']} (cost {ch['search_cost']:.2f})", flush=True
                )
        return 0
    _check_fixed()
    configs = [c for c in HELDOUT_CONFIGS if c != "finder" or all(_choice_path(n).exists() for n in settings)]
    tasks = [(n, c, seed) for seed in HELDOUT_SEEDS for n in settings for c in configs]
    records = run_all("heldout", tasks, args.jobs)
    report_heldout(records, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
