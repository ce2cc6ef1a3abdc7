"""Distributed fault scenarios under Lightning's ``ddp`` (2 CPU processes, gloo), all in one launch.

Usage: python ddp_faults.py OUT_DIR

Every scenario is one ``Trainer.fit`` with every callback of the library; each rank writes
``OUT_DIR/{scenario}_rank{r}.pt`` with its final weights, counters, decisions and any exception, and the
test asserts that both ranks agree (and on the documented outcome). Scenarios:

- ``nan_one_rank_skip``: NaN loss on rank 1 only at step 5, ``GradientClipping(skip_nonfinite=True)``;
- ``nan_one_rank``: the same without skipping (the all-reduced gradients poison both ranks);
- ``missing_metric``: ``val_loss`` not logged in epoch 1 (``EarlyStopping(strict=False)``);
- ``no_validation`` / ``no_validation_lenient``: ``limit_val_batches=0`` with ``EarlyStopping(strict=True)``
  / ``strict=False``;
- ``empty_train``: a zero-length training dataloader.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from tests.reliability._setup import (  # noqa: E402
    IN,
    Net,
    all_callbacks,
    fast_trainer,
    train_loader,
    val_loader,
)

SCENARIOS = {
    "nan_one_rank_skip": dict(fault={"kind": "nan_loss", "step": 5, "rank": 1}, skip=True),
    "nan_one_rank": dict(fault={"kind": "nan_loss", "step": 5, "rank": 1}, skip=False),
    "missing_metric": dict(fault={"kind": "missing_val", "epoch": 1}, skip=True, strict=False),
    "no_validation": dict(fault=None, skip=True, trainer={"limit_val_batches": 0}),
    "no_validation_lenient": dict(fault=None, skip=True, strict=False, trainer={"limit_val_batches": 0}),
    "empty_train": dict(fault=None, skip=True, empty=True),
}


def run(out: Path, name: str, spec: dict) -> None:
    torch.manual_seed(0)
    callbacks = all_callbacks(skip_nonfinite=spec["skip"])
    callbacks[0].strict = spec.get("strict", True)
    trainer = fast_trainer(
        devices=2, strategy="ddp", max_epochs=4, callbacks=callbacks, **spec.get("trainer", {})
    )
    model = Net(fault=spec["fault"])
    train = train_loader(resumable=False)
    if spec.get("empty"):
        train = DataLoader(TensorDataset(torch.zeros(0, IN), torch.zeros(0, dtype=torch.long)), batch_size=8)
    error = None
    try:
        trainer.fit(model, train, val_loader())
    except Exception as err:  # noqa: BLE001 - recorded and compared across ranks
        error = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    es, om, clip = callbacks[0], callbacks[2], callbacks[6]
    result = {
        "error": error,
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "global_step": trainer.global_step,
        "stopped_epoch": es.stopped_epoch,
        "stopping_reason": str(getattr(es, "stopping_reason", None)),
        "best_epoch": es.best_epoch,
        "best_score": float(es.best_score),
        "restored": es.restored,
        "wait_count": es.wait_count,
        "skipped_steps": clip.state_dict()["skipped_steps"],
        "om_checks": [(h["epoch"], h["alert"]) for h in om.history],
        "world_size": trainer.world_size,
    }
    torch.save(result, out / f"{name}_rank{trainer.global_rank}.pt")


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    names = sys.argv[2:] or list(SCENARIOS)
    for name in names:
        run(out, name, SCENARIOS[name])


if __name__ == "__main__":
    main()
