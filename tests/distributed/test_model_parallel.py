"""Every callback and the mixin under ModelParallelStrategy (FSDP2) and FSDPStrategy (FSDP1) on 2 CPU ranks.

One launch of ``model_parallel_callbacks.py`` runs the same fit under DDP (the reference), under
ModelParallel (``fully_shard`` per block), resumed from a ModelParallel distributed checkpoint, and under
FSDPStrategy; this test compares what each rank recorded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed.launch import needs_cpu_fsdp2, run_ddp_script

pytestmark = needs_cpu_fsdp2  # the one launch runs ModelParallel (FSDP2) before FSDPStrategy

SCRIPT = Path(__file__).parent / "model_parallel_callbacks.py"
STEP_KEYS = ("grad/", "penalty/", "proximal_l1/", "stochastic_depth/")
FREEZE_EPOCH, STEPS_PER_EPOCH = 1, 4


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("model_parallel")
    run_ddp_script(SCRIPT, out, timeout=420)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _series(
    result: dict[str, Any], prefixes: tuple[str, ...], from_step: int = 0
) -> list[tuple[int, str, float]]:
    return [
        (step, key, value)
        for step, metrics in result["logged"]
        if step >= from_step
        for key, value in metrics.items()
        if key.startswith(prefixes)
    ]


def _close(a: list[tuple[int, str, float]], b: list[tuple[int, str, float]], rel: float) -> None:
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b]
    for (s, k, x), (_, _, y) in zip(a, b):
        assert math.isclose(x, y, rel_tol=rel, abs_tol=1e-7), (s, k, x, y)


def _weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_model_parallel_matches_ddp_for_every_callback_and_the_mixin(ranks: list[dict[str, Any]]) -> None:
    for res in ranks:
        ddp, mp = res["ddp"], res["mp"]
        assert (ddp["strategy"], mp["strategy"]) == ("DDPStrategy", "CPUModelParallel")
        assert ddp["world_size"] == mp["world_size"] == 2
        # GradientMonitor (total and per-group norms), GradientClipping (pre/post norm, coefficient), the
        # PenaltyMixin value, ProximalL1's zero fraction and the drop rates: every step, as under DDP
        _close(_series(ddp, STEP_KEYS), _series(mp, STEP_KEYS), rel=1e-5)
        assert any(k == "grad/norm/blocks" for _, k, _ in _series(mp, ("grad/",)))
        assert any(k == "grad/clip/coef" and v < 1 for _, k, v in _series(mp, ("grad/",)))  # it clipped
        # validation (and the OverfittingMonitor on it) once BatchNorm is frozen; before that FSDP2 keeps
        # each rank's running statistics where DDP broadcasts rank 0's, so epoch 0 differs slightly
        later = FREEZE_EPOCH * STEPS_PER_EPOCH
        validation = ("val_loss", "overfit/")
        _close(_series(ddp, validation, later), _series(mp, validation, later), rel=1e-5)
        # EarlyStopping: the same decisions; the restored weights are the best epoch's full weights
        assert (mp["best_epoch"], mp["stopped_epoch"]) == (ddp["best_epoch"], ddp["stopped_epoch"]) == (2, 4)
        assert math.isclose(mp["best_score"], ddp["best_score"], rel_tol=1e-6)
        for run in (ddp, mp):
            best = run["val_weights"][run["best_epoch"]]
            assert run["restored"] and _weights_equal(run["final_weights"], best)
            assert not _weights_equal(run["final_weights"], run["last_weights"])  # training went past it
        for k, v in ddp["last_weights"].items():
            assert torch.allclose(mp["last_weights"][k], v, rtol=1e-5, atol=1e-6), k
        # RegularizedModule: the same decay / no-decay classification of the same (unsharded) names
        assert mp["groups"] == ddp["groups"]
        assert [g["name"] for g in mp["groups"]] == ["decay", "no_decay"]
        assert "stem.1.weight" in mp["groups"][1]["params"]
        assert "blocks.0.fc.weight" in mp["groups"][0]["params"]
        # FreezeBatchNorm: eval mode, affine weights as at the end of epoch 0, statistics (broadcast from rank
        # 0 when freezing) as at the end of the freezing epoch; the scheduler restored the rates
        for run in (ddp, mp):
            assert run["bn_training"] == [False]
            for name in ("stem.1.weight", "stem.1.bias"):
                assert torch.equal(run["last_weights"][name], run["val_weights"][FREEZE_EPOCH - 1][name])
            for name in ("stem.1.running_mean", "stem.1.running_var"):
                assert torch.equal(run["last_weights"][name], run["val_weights"][FREEZE_EPOCH][name])
            assert run["drop_rates"] == [0.0, 0.0, 0.0, 0.1]
    # both ranks hold the same decisions and the same full weights
    for fit in ("ddp", "mp", "mp_resumed", "fsdp"):
        a, b = ranks[0][fit], ranks[1][fit]
        decisions = ("best_epoch", "stopped_epoch", "steps")
        assert [a[k] for k in decisions] == [b[k] for k in decisions], fit
        assert _weights_equal(a["final_weights"], b["final_weights"]), fit


@pytest.mark.slow
def test_model_parallel_checkpoint_resumes_exactly(ranks: list[dict[str, Any]]) -> None:
    for res in ranks:
        mp, resumed = res["mp"], res["mp_resumed"]
        # from the distributed checkpoint at the end of epoch 2, with ReproducibleResume: every logged value
        # and the trained weights bitwise as in the uninterrupted run, the same stop decision
        start = 3 * STEPS_PER_EPOCH
        restored = "early_stopping/restored_epoch"  # logged by the uninterrupted run only (see below)
        assert _series(resumed, ("",), start) == [e for e in _series(mp, ("",), start) if e[1] != restored]
        assert _weights_equal(resumed["last_weights"], mp["last_weights"])
        assert (resumed["best_epoch"], resumed["stopped_epoch"]) == (mp["best_epoch"], mp["stopped_epoch"])
        # Lightning saves callback state from rank 0 only, so under a sharded strategy EarlyStopping keeps
        # no best weights across a resume (it warns); the weights stay as trained
        assert resumed["restored"] is False
        assert _weights_equal(resumed["final_weights"], resumed["last_weights"])


@pytest.mark.slow
def test_fsdp_strategy_runs_on_cpu_ranks_with_self_wrapped_modules(ranks: list[dict[str, Any]]) -> None:
    for res in ranks:
        assert "fsdp_error" not in res, res.get("fsdp_traceback")
        ddp, fsdp = res["ddp"], res["fsdp"]
        assert fsdp["strategy"] == "CPUFSDP" and fsdp["groups"] == ddp["groups"]
        # epoch 0, before FreezeBatchNorm: norms, clipping, penalty value and zero fraction as under DDP.
        # (From epoch 1 FreezeBatchNorm freezes only statistics and eval mode under FSDPStrategy, by design,
        # so the affine weights keep training and the runs part.)
        end = FREEZE_EPOCH * STEPS_PER_EPOCH
        first = [e for e in _series(ddp, STEP_KEYS) if e[0] < end]
        _close(first, [e for e in _series(fsdp, STEP_KEYS) if e[0] < end], rel=1e-5)
        best = fsdp["val_weights"][fsdp["best_epoch"]]
        assert fsdp["restored"] and _weights_equal(fsdp["final_weights"], best)
