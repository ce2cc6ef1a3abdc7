"""Exact resume under DDP (2 CPU processes, gloo): one launch, three fits.

Usage: ``python ddp_reproducible_resume.py OUT_DIR``. Runs the 6-epoch reference fit of
``tests/reproducibility/_setup.py`` (checkpoints at every epoch end and at step 19, mid-epoch), then a fit
resumed from the end of epoch 3 and one resumed from step 19; each rank writes ``rank{r}.pt`` with the
final weights of the three fits and what each rank's ``ReproducibleResume`` restored.
Started by ``tests/reproducibility/test_distributed.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tests.helpers import end_process_group

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import random  # noqa: E402

import numpy as np  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from lightning_reg import ReproducibleResume  # noqa: E402
from tests.reproducibility._setup import MID_STEP, run, weights  # noqa: E402


class Diverge(Callback):
    """Make the ranks' generators differ (rank r draws r + 1 numbers from each) before training starts.

    ``seed_everything`` seeds every rank alike; with this, rank 1 restoring rank 0's states (or none) would
    draw other masks than in the uninterrupted run and end elsewhere.
    """

    def setup(self, trainer, pl_module, stage) -> None:  # noqa: ANN001
        n = trainer.global_rank + 1
        torch.rand(n), np.random.rand(n), [random.random() for _ in range(n)]


def main(out: Path) -> None:
    ddp = {"devices": 2, "strategy": "ddp", "callbacks_extra": [Diverge()]}
    full, trainer = run(out / "ckpt", save=True, **ddp)
    result = {"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": trainer.global_step}
    result["full"] = weights(full)
    for name, ckpt in (("boundary", "ep2.ckpt"), ("mid_epoch", f"st{MID_STEP}.ckpt")):
        model, trainer = run(out / name, ckpt_path=str(out / "ckpt" / ckpt), **ddp)
        (cb,) = [c for c in trainer.callbacks if isinstance(c, ReproducibleResume)]
        result[name] = weights(model)
        result[name + "_restored_at"] = cb.restored_at
    saved = torch.load(out / "ckpt" / "ep2.ckpt", weights_only=True)["callbacks"]["ReproducibleResume"]
    result["saved_ranks"] = len(saved["ranks"])
    first, second = saved["ranks"]
    result["saved_states_differ"] = [
        not torch.equal(first["torch"], second["torch"]),
        [first["numpy"]["pos"], *first["numpy"]["key"].tolist()]
        != [second["numpy"]["pos"], *second["numpy"]["key"].tolist()],
        first["python"] != second["python"],
    ]
    torch.save(result, out / f"rank{result['rank']}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    end_process_group()
