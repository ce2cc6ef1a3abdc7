"""Do OverfittingMonitor's alerts mean overfitting? False alarms and detection delay on real training runs.

    python benchmarks/overfitting_alerts.py            # evaluate on the recorded curves (seconds)
    python benchmarks/overfitting_alerts.py --record   # re-record every run first (~15 min)
    python benchmarks/overfitting_alerts.py --quick    # record 3 short runs into a temp file, evaluate
                                                       # them (under a minute; nothing is saved)

**Runs.** The example projects (MNIST-1D with the 1-D ResNet and the MLP, 8x8 digits with ResNet-18), trained
through their LightningCLI with early stopping removed so every curve runs to the end, in settings that do
not overfit (regularized, more data, cosine decay) and settings built to overfit (little data, no
regularization, constant learning rate, long training), plus Mixup runs (train metrics measured on mixed
batches: pessimistic, the train/validation gap starts negative). Several seeds each. Per epoch the
recorder keeps the logged train metrics (train mode), the same metrics measured in eval mode on the whole
training set (what ``OverfittingMonitor(probe=1.0)`` measures) and the validation metrics in
``benchmarks/data/overfitting_curves.json`` (committed; ``--record`` rewrites it).

**Onset of overfitting** (per run and per pair, from the whole validation curve, with hindsight). Smooth the
curve with a centred moving average over 5 epochs (shrinking at the ends); its best epoch is the *turning
point* ``t*``, the epoch early stopping would ideally restore. Estimate the curve's noise as the robust
standard deviation (1.4826 x median absolute deviation) of the raw values around the smoothed ones. The pair
*overfits* when the smoothed curve ends worse than at ``t*`` by more than 2 noise deviations and by more than
5 % of the best value (losses) or 2 points (accuracies): validation got measurably worse while training went
on (Prechelt's definition of overfitting). Its *onset* is the first epoch after ``t*`` at which the smoothed
curve is worse than at ``t*`` by more than 2 noise deviations: the first moment the rise is larger than the
noise, which is the earliest any detector can tell it from noise, even one that sees the future. The pair
*improves to the end* when ``t*`` lies in the last 10 % of epochs; anything else is a *plateau*.

**Scores** (per pair): false alarms (alerts before the turning point, in any run, and any alert in a run
that improves to the end); runs improving to the end that got an alert (the target is none); overfitting
runs without any alert after the turning point (missed); detection delay = first alert at or after the
turning point minus the onset, in checks (median; the target is at most 3), also given from the turning
point. Every candidate criterion set is replayed through the pure code the callback runs
(``OverfittingCriteria``: criteria, gates, per-pair alerts), so the numbers are the callback's own.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CURVES = ROOT / "benchmarks" / "data" / "overfitting_curves.json"
COMMAND = "python benchmarks/overfitting_alerts.py"


# ------------------------------------------------------------------------------------------ the runs
@dataclass(frozen=True)
class Setting:
    """One training setting: an example project's config with changes, run for several seeds."""

    name: str
    project: str  # "mnist1d" or "digits"
    config: str  # base YAML in example_projects/<project>/configs
    changes: dict[str, Any]
    seeds: tuple[int, ...]
    kind: str  # what it was built for: "regularized" or "built to overfit" or "mixup"
    model: dict[str, Any] | None = None  # replaces the config's model entirely


MLP = "example_projects.mnist1d.MLPClassifier"
CONSTANT_LR: dict[str, Any] = {"lr_scheduler": None}
COSINE = {"class_path": "lightning_reg.WarmupCosineLR", "init_args": {"warmup_steps": 0}}


def _mlp(dropout: float, wd: float, lr: float = 3e-3, schedule: dict | None = None) -> dict:
    args = {"hidden": 256, "depth": 2, "dropout": dropout, "lr": lr, "weight_decay": wd}
    return {"class_path": MLP, "init_args": {**args, "lr_scheduler": schedule}}


SETTINGS: list[Setting] = [
    Setting("mlp-overfit", "mnist1d", "baseline",
            {"data": {"train_size": 500}, "trainer": {"max_epochs": 100}}, (0, 1, 2), "built to overfit",
            _mlp(0.0, 0.0)),
    Setting("mlp-small-dropout", "mnist1d", "baseline",
            {"data": {"train_size": 250}, "trainer": {"max_epochs": 120}}, (0, 1, 2), "built to overfit",
            _mlp(0.5, 0.1)),
    Setting("mlp-regularized", "mnist1d", "baseline",
            {"data": {"train_size": 3000}, "trainer": {"max_epochs": 40}}, (0, 1, 2), "regularized",
            _mlp(0.3, 0.05, lr=1e-3, schedule=COSINE)),
    Setting("mlp-mixup", "mnist1d", "baseline",
            {"data": {"train_size": 1000}, "trainer": {"max_epochs": 60}}, (0, 1, 2), "mixup",
            {"class_path": "benchmarks.overfitting_alerts.MixupMLPClassifier",
             "init_args": {"hidden": 256, "depth": 2, "dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0,
                           "mixup_alpha": 0.4, "lr_scheduler": COSINE}}),
    Setting("resnet-regularized", "mnist1d", "regularized", {}, (0, 1), "regularized"),
    Setting("resnet-baseline", "mnist1d", "baseline", {}, (0, 1), "no regularization, cosine decay"),
    Setting("resnet-overfit", "mnist1d", "baseline",
            {"data": {"train_size": 250}, "trainer": {"max_epochs": 40}, "model": {"init_args": CONSTANT_LR}},
            (0, 1), "built to overfit"),
    Setting("digits-regularized", "digits", "regularized", {}, (0, 1), "regularized"),
    Setting("digits-overfit", "digits", "baseline",
            {"data": {"train_size": 150}, "trainer": {"max_epochs": 40}}, (0, 1), "built to overfit"),
]  # fmt: skip

QUICK: list[Setting] = [
    Setting("mlp-overfit", "mnist1d", "baseline",
            {"data": {"train_size": 500}, "trainer": {"max_epochs": 40}}, (0,), "built to overfit",
            _mlp(0.0, 0.0)),
    Setting("mlp-regularized", "mnist1d", "baseline",
            {"data": {"train_size": 3000}, "trainer": {"max_epochs": 15}}, (0,), "regularized",
            _mlp(0.3, 0.05, lr=1e-3, schedule=COSINE)),
    Setting("mlp-mixup", "mnist1d", "baseline",
            {"data": {"train_size": 1000}, "trainer": {"max_epochs": 20}}, (0,), "mixup",
            {"class_path": "benchmarks.overfitting_alerts.MixupMLPClassifier",
             "init_args": {"hidden": 256, "depth": 2, "dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0,
                           "mixup_alpha": 0.4, "lr_scheduler": COSINE}}),
]  # fmt: skip


def _merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _mixup_classifier() -> type:
    """The MNIST-1D MLP classifier trained with Mixup; its train metrics are measured on mixed batches."""
    import torch

    from example_projects.mnist1d import MLPClassifier
    from lightning_reg import BatchMixer

    class MixupMLPClassifier(MLPClassifier):  # RegularizedModule already mixes in BatchMixingMixin
        def __init__(self, mixup_alpha: float = 0.4, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.batch_mixer = BatchMixer(num_classes=10, mixup_alpha=mixup_alpha, seed=0)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, soft = batch
            logits = self(x)
            loss = self.mixing_loss(logits, soft)
            acc = (logits.argmax(-1) == soft.argmax(-1)).float().mean()
            opts = dict(on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
            self.log("train_loss", loss, **opts)
            self.log("train_acc", acc, **opts)
            return loss

    return MixupMLPClassifier


def __getattr__(name: str) -> Any:  # LightningCLI imports the Mixup class by its dotted path
    if name == "MixupMLPClassifier":
        cls = _mixup_classifier()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def record_run(setting: Setting, seed: int) -> dict[str, Any]:
    """Train one run through the example project's LightningCLI; return its per-epoch curves."""
    import lightning as L
    import torch
    import yaml
    from torch.utils.data import DataLoader

    from example_projects.common import make_cli
    from example_projects.digits.data import DigitsDataModule
    from example_projects.mnist1d.data import MNIST1DDataModule

    base = yaml.safe_load((ROOT / "example_projects" / setting.project / "configs" / f"{setting.config}.yaml")
                          .read_text())
    cfg = _merge(base, setting.changes)
    if setting.model is not None:
        cfg["model"] = copy.deepcopy(setting.model)
    cfg["seed_everything"] = seed
    trainer_cfg = cfg["trainer"]
    trainer_cfg.update(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    # no early stopping and no monitor: every curve runs to the end; the criteria are replayed offline
    trainer_cfg["callbacks"] = [
        c for c in trainer_cfg.get("callbacks", []) or []
        if not c["class_path"].endswith(("EarlyStopping", "OverfittingMonitor"))
    ]
    curves: dict[str, list[float]] = {k: [] for k in (
        "train_loss", "train_acc", "probe_loss", "probe_acc", "val_loss", "val_acc")}

    class Recorder(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            for key in ("val_loss", "val_acc"):
                curves[key].append(float(trainer.callback_metrics[key]))

        @torch.no_grad()
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            for key in ("train_loss", "train_acc"):
                curves[key].append(float(trainer.callback_metrics[key]))
            was_training = pl_module.training
            pl_module.eval()
            total = correct = 0
            loss_sum = 0.0
            with torch.random.fork_rng():
                for x, y in DataLoader(trainer.datamodule.train_set, batch_size=500):
                    logits = pl_module(x)
                    loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(-1) == y).sum())
                    total += len(y)
            pl_module.train(was_training)
            curves["probe_loss"].append(loss_sum / total)
            curves["probe_acc"].append(correct / total)

    with tempfile.TemporaryDirectory() as tmp:
        trainer_cfg["default_root_dir"] = tmp  # where LightningCLI saves its config
        path = Path(tmp) / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        dm_cls = MNIST1DDataModule if setting.project == "mnist1d" else DigitsDataModule
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli = make_cli(dm_cls, args=["--config", str(path), "--trainer.enable_model_summary=false"],
                           run=False)
            cli.trainer.callbacks.append(Recorder())
            start, cpu = time.perf_counter(), time.process_time()
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {
        "setting": setting.name,
        "project": setting.project,
        "kind": setting.kind,
        "seed": seed,
        "config": f"example_projects/{setting.project}/configs/{setting.config}.yaml",
        "changes": setting.changes,
        "model": setting.model,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "curves": {k: [round(v, 6) for v in vs] for k, vs in curves.items()},
    }


def record(settings: Sequence[Setting], path: Path) -> list[dict[str, Any]]:
    """Record every run of ``settings`` and write them to ``path`` (JSON)."""
    import logging

    import lightning  # noqa: F401  (configures its loggers on import; quiet them after)
    import torch

    torch.set_num_threads(1)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    runs = []
    start = time.perf_counter()
    for setting in settings:
        for seed in setting.seeds:
            run = record_run(setting, seed)
            runs.append(run)
            val = run["curves"]["val_loss"]
            print(f"[record] {setting.name} seed {seed}: {len(val)} epochs in {run['seconds']:.0f} s "
                  f"(val_loss {val[0]:.3f} -> min {min(val):.3f} -> {val[-1]:.3f})", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": f"{COMMAND} --record",
        "seconds": round(time.perf_counter() - start),
        "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in runs)),
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "runs": runs,
    }
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
    print(f"[record] {len(runs)} runs in {payload['seconds']} s ({payload['cpu_seconds']} s of CPU; load "
          f"average {payload['load_average_at_end']}) -> {path}")
    return runs


# ------------------------------------------------------------------------------------------ evaluation
PAIRS = {"loss": ("train_loss", "val_loss", "min"), "acc": ("train_acc", "val_acc", "max")}
SMOOTH = 5  # width of the centred moving average that defines the turning point
NOISE_K = 2.0  # a rise is measurable once it exceeds NOISE_K robust standard deviations of the curve
MARGIN = {"min": ("relative", 0.05), "max": ("absolute", 0.02)}  # the rise that makes a pair "overfit"


def _smooth(values: Sequence[float], width: int = SMOOTH) -> list[float]:
    h = width // 2
    return [statistics.fmean(values[max(0, i - h): i + h + 1]) for i in range(len(values))]


@dataclass
class Onset:
    """The hindsight reading of one validation curve (see the module docstring)."""

    kind: str  # "overfits", "improves" or "plateau"
    turning: int  # epoch of the best smoothed value
    onset: int | None  # first epoch after it where the rise exceeds the noise (overfitting runs only)


def onset_of(values: Sequence[float], mode: str) -> Onset:
    """Classify a whole validation curve and find the onset of overfitting (see the module docstring)."""
    sign = 1.0 if mode == "min" else -1.0
    raw = [sign * v for v in values]
    smooth = _smooth(raw)
    turning = min(range(len(smooth)), key=lambda i: (smooth[i], i))
    noise = 1.4826 * statistics.median(abs(r - s) for r, s in zip(raw, smooth))
    how, size = MARGIN[mode]
    margin = size * abs(smooth[turning]) if how == "relative" else size
    n = len(raw)
    if smooth[-1] - smooth[turning] > max(margin, NOISE_K * noise):
        first = next(i for i in range(turning, n) if smooth[i] - smooth[turning] > NOISE_K * noise)
        return Onset("overfits", turning, first)
    if turning >= n - max(1, round(0.1 * n)):
        return Onset("improves", turning, None)
    return Onset("plateau", turning, None)


@dataclass(frozen=True)
class Candidate:
    """A set of criteria replayed through ``OverfittingCriteria`` (``legacy``: the previous behaviour)."""

    label: str
    criteria: dict[str, float] | None  # None: the library's default (by pair mode)
    window: int = 8
    trend_t: float = 2.5
    warmup: int = 0
    train_side: str = "logged"  # or "probe": eval-mode values on the whole training set
    legacy: bool = False  # no gates, an alert in one pair counts for every pair (before this release)


DEFAULT = "trend 5 % (losses) / 10 % (accuracies), window 8, t 2.5 (new default)"
CANDIDATES = [
    Candidate("previous defaults: GL 5 % or UP 3, one alert for all pairs", {"gl": 5.0, "up": 3},
              legacy=True),
    Candidate("GL 5 % or UP 3, per pair, gated", {"gl": 5.0, "up": 3}),
    Candidate("GL 10 %, per pair, gated", {"gl": 10.0}),
    Candidate("PQ 0.5 (strip 5), per pair, gated", {"pq": 0.5}),
    Candidate("UP 4, per pair, gated", {"up": 4}),
    Candidate("trend 5 %, window 6, t 2.5", {"trend": 5.0}, window=6),
    Candidate("trend 5 %, window 8, t 2.0", {"trend": 5.0}, trend_t=2.0),
    Candidate("trend 2 %, window 8, t 2.5", {"trend": 2.0}),
    Candidate("trend 5 %, window 8, t 2.5", {"trend": 5.0}),
    Candidate("trend 10 %, window 8, t 2.5", {"trend": 10.0}),
    Candidate(DEFAULT, None),
    Candidate("trend 5 %, window 10, t 2.5", {"trend": 5.0}, window=10),
    Candidate("new default, train side from the probe (eval mode)", None, train_side="probe"),
]  # fmt: skip


def replay(run: dict[str, Any], cand: Candidate) -> dict[str, list[bool]]:
    """Per pair, whether each check of ``run`` is an alert under ``cand`` (the callback's own decisions)."""
    from lightning_reg.overfitting.criteria import OverfittingCriteria

    c = run["curves"]
    crit = OverfittingCriteria({p: m for p, (_, _, m) in PAIRS.items()}, cand.criteria, window=cand.window,
                               warmup=cand.warmup, trend_t=cand.trend_t)
    out: dict[str, list[bool]] = {p: [] for p in PAIRS}
    for t in range(len(c["val_loss"])):
        values = {}
        for p, (tk, vk, _) in PAIRS.items():
            train = c[tk] if cand.train_side == "logged" else c["probe_" + tk.split("_", 1)[1]]
            values[p] = (train[t], c[vk][t])
        reports = crit.update(values)
        if cand.legacy:  # raw criteria, warm-up only, one flag for every pair
            flag = t >= cand.warmup and any(r.fired for r in reports.values())
            for p in PAIRS:
                out[p].append(flag)
        else:
            for p in PAIRS:
                out[p].append(reports[p].alert)
    return out


@dataclass
class Score:
    """False alarms and delays of one candidate on one pair."""

    runs: int = 0
    false_alarm_runs: int = 0
    false_alarm_checks: int = 0
    improving: int = 0
    improving_alerted: int = 0
    plateau: int = 0
    plateau_alerted: int = 0
    overfitting: int = 0
    missed: int = 0
    delays: list[int] = field(default_factory=list)  # first alert - onset (measurable rise)
    delays_turning: list[int] = field(default_factory=list)  # first alert - turning point

    def cells(self, targets: bool = False) -> list[tuple[str, str, str, bool | None]]:
        """``(column, value, target, passed)`` of the table; the targets only for the default."""

        def med(xs: list[int]) -> str:
            return "-" if not xs else f"{statistics.median(xs):g}"

        delay_ok = bool(self.delays) and statistics.median(self.delays) <= 3 and self.missed == 0
        return [
            ("false alarms: runs (checks)",
             f"{self.false_alarm_runs}/{self.runs} ({self.false_alarm_checks})", "", None),
            ("improving runs alerted", f"{self.improving_alerted}/{self.improving}",
             "none" if targets else "", (self.improving_alerted == 0) if targets else None),
            ("overfitting runs missed", f"{self.missed}/{self.overfitting}", "", None),
            ("delay after onset (after turning point)", f"{med(self.delays)} ({med(self.delays_turning)})",
             "<= 3, none missed" if targets else "", delay_ok if targets else None),
            ("plateau runs alerted", f"{self.plateau_alerted}/{self.plateau}", "", None),
        ]


def score(runs: Sequence[dict[str, Any]], cand: Candidate) -> dict[str, Score]:
    scores = {p: Score() for p in PAIRS}
    for run in runs:
        alerts = replay(run, cand)
        for p, (_, vk, mode) in PAIRS.items():
            o = onset_of(run["curves"][vk], mode)
            s, al = scores[p], alerts[p]
            s.runs += 1
            early = sum(al[: o.turning]) if o.kind != "improves" else sum(al)
            s.false_alarm_checks += early
            s.false_alarm_runs += early > 0
            if o.kind == "improves":
                s.improving += 1
                s.improving_alerted += any(al)
            elif o.kind == "plateau":
                s.plateau += 1
                s.plateau_alerted += any(al[o.turning:])
            else:
                s.overfitting += 1
                after = [t for t in range(o.turning, len(al)) if al[t]]
                if after:
                    s.delays.append(after[0] - o.onset)
                    s.delays_turning.append(after[0] - o.turning)
                else:
                    s.missed += 1
    return scores


def evaluate(runs: Sequence[dict[str, Any]], quick: bool, meta: dict[str, Any] | None = None) -> None:
    from benchmarks.harness import Report

    name = "overfitting_alerts_quick" if quick else "overfitting_alerts"
    report = Report(name, COMMAND + (" --quick" if quick else ""),
                    "OverfittingMonitor alerts on real runs: false alarms and detection delay")
    print("\nper run (pair: class, turning point, onset; first alert under the new default):")
    default = next(c for c in CANDIDATES if c.label == DEFAULT)
    for run in runs:
        alerts = replay(run, default)
        parts = []
        for p, (_, vk, mode) in PAIRS.items():
            o = onset_of(run["curves"][vk], mode)
            first = next((t for t, a in enumerate(alerts[p]) if a), None)
            parts.append(f"{p}: {o.kind} t*={o.turning} onset={o.onset} first alert={first}")
        print(f"  {run['setting']:<20} seed {run['seed']}  " + " | ".join(parts))
    for cand in CANDIDATES:
        scores = score(runs, cand)
        for p, s in scores.items():
            is_default = cand.label == DEFAULT
            summary = "overfitting_alerts" if is_default or cand.legacy else False
            for column, value, target, passed in s.cells(targets=is_default):
                report.add(f"{p} pair ({PAIRS[p][0]} / {PAIRS[p][1]})", cand.label, value, target=target,
                           column=column, summary=summary, passed=passed)
    kinds: dict[str, dict[str, int]] = {p: {} for p in PAIRS}
    for run in runs:
        for p, (_, vk, mode) in PAIRS.items():
            k = onset_of(run["curves"][vk], mode).kind
            kinds[p][k] = kinds[p].get(k, 0) + 1
    settings = sorted({f"{r['setting']} ({r['kind']})" for r in runs})
    report.note(
        f"{len(runs)} runs of the example projects ({', '.join(settings)}), curves in "
        "`benchmarks/data/overfitting_curves.json`. Classes from each whole validation curve: "
        + "; ".join(f"{p}: " + ", ".join(f"{v} {k}" for k, v in sorted(d.items())) for p, d in kinds.items())
        + ". Turning point: best epoch of the 5-epoch centred moving average; onset: first epoch after it "
        "where that average is worse than at the turning point by more than 2 robust standard deviations "
        "of the curve around it; a pair overfits when it ends worse than at the turning point by more "
        "than that and by 5 % (losses) or 2 points (accuracies); it improves to the end when the turning "
        "point is in the last 10 % of epochs. Delay: first alert at or after the turning point minus the "
        "onset, in checks (median over overfitting runs; in parentheses: minus the turning point). False "
        "alarms: alerts before the turning point, and any alert in a run that improves to the end. Plateau "
        "runs (a rise smaller than the margin) alerted after their turning point are neither."
    )
    if meta and "cpu_seconds" in meta:
        report.note(
            f"Recording the curves (`{COMMAND} --record`) took {meta['seconds']} s "
            f"({meta['cpu_seconds']} s of CPU, load average {meta['load_average_at_end']} at the end); "
            "evaluating them takes seconds."
        )
    if not quick:
        report.save()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--record", action="store_true", help="re-record every run (~20 min)")
    p.add_argument("--quick", action="store_true", help="record 3 short runs to a temp file, evaluate them")
    a = p.parse_args(argv)
    if a.quick:
        with tempfile.TemporaryDirectory() as tmp:
            record(QUICK, Path(tmp) / "curves.json")
            payload = json.loads((Path(tmp) / "curves.json").read_text())
    else:
        if a.record or not CURVES.exists():
            record(SETTINGS, CURVES)
        payload = json.loads(CURVES.read_text())
    evaluate(payload["runs"], quick=a.quick, meta=payload)


if __name__ == "__main__":
    main()
