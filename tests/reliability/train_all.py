"""Standalone training run with every callback, for the resume and kill tests (fresh process each time).

Usage: python train_all.py OUT_DIR [--resume CKPT] [--pause-epoch K | --pause-step S] [--tag NAME]

Writes checkpoints to ``OUT_DIR/ckpt`` (end of every epoch, and every ``STEP_EVERY`` optimizer steps, i.e.
mid-epoch) and, when ``fit`` returns, ``OUT_DIR/{tag}.pt`` with the final weights, the weights before the
best-weights restore, every callback's ``state_dict()``, the optimizer/scheduler/mixer state and counters.
``--pause-*`` makes the run write ``OUT_DIR/paused`` once that point is reached (after the checkpoint of the
previous step/epoch was written) and then sleep, so a test can SIGKILL it at a known point.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402

from tests.reliability._setup import (  # noqa: E402
    Net,
    all_callbacks,
    fast_trainer,
    train_loader,
    val_loader,
)

MAX_EPOCHS = 5
STEP_EVERY = 11  # 8 batches per epoch: steps 11, 22, 33 are mid-epoch


class Pause(Callback):
    """Write a marker and sleep at a given epoch start or step (once a checkpoint before it exists)."""

    def __init__(self, out: Path, epoch: int | None, step: int | None) -> None:
        self.out, self.epoch, self.step = out, epoch, step

    def _pause(self) -> None:
        (self.out / "paused").write_text("1")
        time.sleep(600)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            self._pause()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step == self.step:
            self._pause()


class Recorder(Callback):
    """Keep the weights as training left them, before EarlyStopping restores the best ones (runs first)."""

    def on_train_end(self, trainer, pl_module) -> None:
        self.last_weights = copy.deepcopy(pl_module.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--pause-epoch", type=int, default=None)
    parser.add_argument("--pause-step", type=int, default=None)
    parser.add_argument("--tag", default="result")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    recorder = Recorder()
    ours = all_callbacks()
    ckpt_dir = args.out / "ckpt"
    checkpoints = [
        ModelCheckpoint(ckpt_dir, filename="ep-{epoch}-{step}", save_top_k=-1, every_n_epochs=1),
        ModelCheckpoint(
            ckpt_dir, filename="st-{epoch}-{step}", save_top_k=-1, every_n_train_steps=STEP_EVERY
        ),
    ]
    callbacks = [recorder, *ours, *checkpoints, Pause(args.out, args.pause_epoch, args.pause_step)]
    trainer = fast_trainer(max_epochs=MAX_EPOCHS, callbacks=callbacks, enable_checkpointing=True)
    model = Net()
    trainer.fit(model, train_loader(), val_loader(), ckpt_path=args.resume)

    opt = trainer.optimizers[0]
    result = {
        "final_weights": model.state_dict(),
        "last_weights": recorder.last_weights,
        "callback_states": {cb.state_key: cb.state_dict() for cb in ours},
        "optimizer": opt.state_dict(),
        "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "mixer": model.batch_mixer.state_dict(),
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "best": {k: getattr(ours[0], k) for k in ("best_epoch", "best_step", "best_score", "restored")},
        "metrics": {k: v.clone() for k, v in trainer.callback_metrics.items()},
    }
    torch.save(result, args.out / f"{args.tag}.pt")


if __name__ == "__main__":
    main()
