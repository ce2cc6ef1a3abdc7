"""Cost of the one step-metric path (``log_step_metrics``) against the alternatives, per logging step.

Every callback writes its step metrics with `lightning_reg._shared.step_logging.log_step_metrics`: one stacked
``tolist()`` (one host sync), one ``log_metrics`` call per logger at Lightning's step, and the tensors put
into ``trainer.callback_metrics`` (so ``EarlyStopping``/``ModelCheckpoint`` can monitor them). The
alternatives: ``pl_module.log_dict(on_step=True)`` (Lightning's own path: monitorable, but a
``ResultCollection`` entry per key and one ``.item()`` per key when flushed) and writing tensors straight to
the loggers (cheap, not monitorable: what the gradient callbacks did before).

Measured inside a real ``Trainer.fit`` (tiny MLP, CSVLogger, ``log_every_n_steps=1`` so every step is a
logging step), per training step, for 11 keys; the cost per step of a run that logs every ``n`` steps is
these numbers divided by ``n``.

    PYTHONPATH=. python benchmarks/conventions.py [--steps 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.harness import Report, interleaved_samples
from lightning_reg._shared.step_logging import log_step_metrics

KEYS = [f"bench/key_{i}" for i in range(11)]


class Writer(L.Callback):
    def __init__(self, how: str) -> None:
        self.how = how

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.how == "none":
            return
        grads = [p.grad for p in pl_module.parameters()]
        norms = torch.stack(torch._foreach_norm(grads))
        metrics = {k: norms[i % len(grads)] for i, k in enumerate(KEYS)}
        if self.how == "log_step_metrics":
            log_step_metrics(trainer, metrics)
        elif self.how == "log_dict":
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        elif self.how == "loggers":
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)


class Timer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self.t0)


class MLP(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        layers = [nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)]
        self.net = nn.Sequential(*layers)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run(how: str, steps: int) -> float:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(steps * 32, 64), torch.randint(0, 10, (steps * 32,)))
    timer = Timer()
    with tempfile.TemporaryDirectory() as d:
        trainer = L.Trainer(
            max_steps=steps, log_every_n_steps=1, logger=CSVLogger(d), callbacks=[Writer(how), timer],
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )
        trainer.fit(MLP(), DataLoader(data, batch_size=32))
    times = sorted(timer.times[10:])
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = Report(
        "conventions",
        f"PYTHONPATH=. python benchmarks/conventions.py --steps {args.steps} --rounds {args.rounds}",
        "Writing 11 step metrics on a logging step: cost per training step",
    )
    arms = ["none", "log_step_metrics", "log_dict", "loggers"]
    # Rounds of whole fits, arms interleaved within each round; a sample is the median step time of one fit
    # (steps 10+), so the harness's medians and paired ratios apply to per-step times.
    timings = interleaved_samples({arm: (lambda arm=arm: run(arm, args.steps)) for arm in arms}, args.rounds)
    report.add("step", "plain step (no metrics)", timings.median("none") * 1e3, "ms", summary=True)
    for arm, label in (("log_step_metrics", "log_step_metrics (ours: loggers + callback_metrics)"),
                       ("log_dict", "pl_module.log_dict(on_step=True)"),
                       ("loggers", "tensors straight to the loggers (not monitorable)")):
        added = (timings.median(arm) - timings.median("none")) * 1e3
        ratio = timings.ratio(arm, "none")
        report.add("added per logging step", label, added, "ms", note=f"{ratio:.3f}x a plain step",
                   summary=True)
    report.note("Medians over steps 10+ of each fit, then over rounds. Subtract nothing else: each arm also "
                "pays the CSVLogger's own row handling.")
    report.save()


if __name__ == "__main__":
    main()
