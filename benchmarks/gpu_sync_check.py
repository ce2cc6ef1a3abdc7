"""A fit on CUDA with every callback and the mixin, whose per-step code runs under sync-debug "error".

The library promises no host-device synchronisation per training step. This fit wraps every per-step hook
of every lightning-reg callback (and of ``ProximalL1``'s optimizer step hook), the module's
``training_step`` (forward with scheduled ``DropPath`` and dropout, the mixing loss) and its
``on_after_batch_transfer`` / ``on_before_optimizer_step`` (Mixup, the penalty) in
``torch.cuda.set_sync_debug_mode("error")``: any synchronising CUDA call in them raises, with the hook in the
traceback. Lightning's own loop code stays in the default mode (it synchronises for its logging and
progress bookkeeping, which is not ours to judge). Epoch-level hooks (validation end, checkpoint saving)
may synchronise and are not wrapped.

Run: ``PYTHONPATH=. python benchmarks/gpu_sync_check.py`` (needs CUDA; exits 2 without it). Prints one
line per wrapped hook with its call count, and ``OK`` at the end. ``--cpu`` runs the same fit on the CPU
with a dispatch mode that raises on the ATen calls that would read a device value on the host
(``_local_scalar_dense`` for ``.item()``/``float()``/``bool()``, ``nonzero``, ``equal``, ``is_nonzero``)
and on ``Tensor.tolist`` and ``torch.tensor`` of a list of tensors: the closest check a machine without a GPU
can make.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import (
    BatchMixer,
    EarlyStopping,
    FreezeBatchNorm,
    GradientClipping,
    GradientMonitor,
    OverfittingMonitor,
    ProximalL1,
    RegularizedModule,
    ReproducibleResume,
    StochasticDepthScheduler,
)
from lightning_reg.penalties import WeightPenalty
from tests.helpers import PER_STEP_HOOKS, ResidualBlock, SyncCounter, fast_trainer

GUARDED_HOOKS = (*PER_STEP_HOOKS, "_after_step")  # and ProximalL1's optimizer step post hook
MODULE_HOOKS = ("training_step", "on_after_batch_transfer", "on_before_optimizer_step")
CALLS: Counter[str] = Counter()
CPU_MODE = False


@contextmanager
def sync_errors() -> Iterator[None]:
    if CPU_MODE:
        # CPU stand-in for sync-debug "error": raise on ops that read a tensor's value on the host
        with SyncCounter(raise_on_read=True):
            yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def guard(obj: Any, names: tuple[str, ...], label: str) -> None:
    """Replace each bound method ``obj.<name>`` by one that runs under sync-debug "error"."""
    for name in names:
        fn: Callable[..., Any] | None = getattr(obj, name, None)
        if fn is None or not callable(fn):
            continue

        @functools.wraps(fn)
        def wrapped(*args: Any, __fn: Callable[..., Any] = fn, __key: str = f"{label}.{name}", **kw: Any) -> Any:  # noqa: E501
            CALLS[__key] += 1
            with sync_errors():
                return __fn(*args, **kw)

        object.__setattr__(obj, name, wrapped)


class Net(RegularizedModule):
    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__(
            optimizer=partial(torch.optim.SGD, momentum=0.9),
            lr=0.05,
            weight_decay=1e-3,
            weight_penalty=WeightPenalty(l2=1e-4),
            batch_mixer=BatchMixer(num_classes=classes, mixup_alpha=0.4, cutmix_alpha=0.0, prob=0.8, seed=0),
        )
        self.stem = nn.Sequential(nn.Linear(32, width), nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(4)])
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.blocks(self.stem(x))))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return self.mixing_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))
        self.log("train_loss", F.cross_entropy(self(x), y))  # a pair for the OverfittingMonitor


def main() -> int:
    global CPU_MODE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="CPU stand-in (host-read detection by dispatch mode)")
    CPU_MODE = ap.parse_args().cpu
    if not CPU_MODE and not torch.cuda.is_available():
        print("gpu_sync_check: needs a CUDA device; none found (--cpu: CPU stand-in).", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
    callbacks = [
        EarlyStopping("val_loss", patience=10),
        FreezeBatchNorm(epoch=2),
        GradientMonitor(log_every_n_steps=1),
        GradientClipping("autoclip", percentile=90.0, history_size=16),
        StochasticDepthScheduler(
            max_rate=0.2, schedule="warmup", cutoff=0.5, cutoff_unit="fraction", include_dropout=True
        ),
        OverfittingMonitor({"loss": ("train_loss", "val_loss")}, verbose=False),
        ProximalL1(l1=1e-5),
        ReproducibleResume(),
    ]
    for cb in callbacks:
        guard(cb, GUARDED_HOOKS, type(cb).__name__)
    model = Net()
    guard(model, MODULE_HOOKS, "Net")
    # No logger: a logging step writes its metrics with one host read by design (log_step_metrics); the
    # claim checked here is about the steps in between.
    trainer = fast_trainer(
        accelerator="cpu" if CPU_MODE else "gpu",
        devices=1,
        max_epochs=4,
        log_every_n_steps=1,
        num_sanity_val_steps=2,  # Lightning's default: the sanity batches go through on_after_batch_transfer
        callbacks=callbacks,
    )
    trainer.fit(
        model,
        DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32, shuffle=True),
        DataLoader(TensorDataset(x[384:], y[384:]), batch_size=64),
    )
    for key, count in sorted(CALLS.items()):
        print(f"  {key}: {count} calls without a host-device sync")
    steps = trainer.global_step
    assert CALLS["Net.training_step"] >= steps > 0, (CALLS, steps)
    what = "host read of a tensor value" if CPU_MODE else "synchronising CUDA call"
    print(f"OK: {sum(CALLS.values())} per-step calls over {steps} steps, no {what}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
