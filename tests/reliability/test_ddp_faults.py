"""Distributed faults: 2 CPU processes (gloo), Lightning ``ddp``, every callback on; one bounded launch.

Outcomes asserted (and documented in the README "Guarantees" section), identical on both ranks:

- NaN loss on rank 1 only, ``skip_nonfinite=True``: DDP all-reduces the NaN into both ranks' gradients;
  both skip that one step and train on.
- The same without skipping: both ranks' weights turn NaN, the synced ``val_loss`` is NaN, both stop in
  that epoch and restore epoch 0.
- ``val_loss`` not logged in one epoch: Lightning keeps the previous value in ``callback_metrics``, so that
  epoch counts as "no improvement" and the monitor checks the stale value.
- Validation disabled, ``strict=True``: every rank raises the same ``RuntimeError`` at the first check (no
  hang). ``strict=False``: training runs to ``max_epochs``, nothing to restore.
- Zero-length training dataloader: Lightning warns and trains nothing; callbacks and the mixin do not fail.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.distributed.launch import run_ddp_script
from tests.reliability._setup import assert_same

SCRIPT = Path(__file__).with_name("ddp_faults.py")
SCENARIOS = [
    "nan_one_rank_skip",
    "nan_one_rank",
    "missing_metric",
    "no_validation",
    "no_validation_lenient",
    "empty_train",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("ddp_faults")
    run_ddp_script(SCRIPT, out, timeout=300)
    return {s: [torch.load(out / f"{s}_rank{r}.pt", weights_only=False) for r in (0, 1)] for s in SCENARIOS}


def _ranks_agree(pair: list[dict], params_only: bool = False) -> dict:
    r0, r1 = pair
    assert r0["world_size"] == r1["world_size"] == 2
    for key in r0:
        if key == "weights" and params_only:
            continue
        assert_same(r0[key], r1[key], key)
    if params_only:  # BatchNorm statistics and metric accumulators are per rank (local data)
        for k, v in r0["weights"].items():
            if not any(s in k for s in ("running_", "num_batches", "train_loss_mean")):
                assert torch.equal(v, r1["weights"][k]), k
    return r0


def _finite(weights: dict) -> bool:
    return all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_nan_on_one_rank_both_skip_the_same_step(results: dict) -> None:
    r = _ranks_agree(results["nan_one_rank_skip"])
    assert r["error"] is None and r["skipped_steps"] == 1
    assert r["global_step"] == 16  # 4 epochs x 4 batches per rank: training went on
    assert _finite(r["weights"]) and r["restored"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_nan_on_one_rank_without_skip_stops_both_and_restores(results: dict) -> None:
    r = _ranks_agree(results["nan_one_rank"])
    assert r["error"] is None and r["stopping_reason"].endswith("NON_FINITE_METRIC")
    assert r["stopped_epoch"] == 1 and r["global_step"] == 8  # fault at step 5 is in epoch 1
    assert r["best_epoch"] == 0 and r["restored"] and _finite(r["weights"])
    assert [alert for _, alert in r["om_checks"]] == [False, False]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_missing_metric_for_one_epoch(results: dict) -> None:
    r = _ranks_agree(results["missing_metric"])
    assert r["error"] is None and r["global_step"] == 16
    assert [e for e, _ in r["om_checks"]] == [0, 1, 2, 3]  # epoch 1 checked against the stale value
    assert r["best_epoch"] != 1 and r["restored"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_validation_disabled(results: dict) -> None:
    strict = _ranks_agree(results["no_validation"], params_only=True)
    assert strict["error"].startswith("RuntimeError")
    assert "`val_loss` which is not available" in strict["error"]
    assert strict["global_step"] == 4 and not strict["restored"]  # raised at the end of epoch 0
    lenient = _ranks_agree(results["no_validation_lenient"])
    assert lenient["error"] is None and lenient["global_step"] == 16
    assert lenient["best_epoch"] is None and not lenient["restored"] and lenient["om_checks"] == []
    assert math.isinf(lenient["best_score"])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_zero_length_train_dataloader(results: dict) -> None:
    r = _ranks_agree(results["empty_train"])
    assert r["error"] is None and r["global_step"] == 0 and not r["restored"]
    assert r["skipped_steps"] == 0 and r["om_checks"] == []
