"""DDP (2 CPU processes): both ranks agree on the best score and end with the best epoch's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_reg._shared.lightning_compat import EarlyStoppingReason
from tests.distributed.launch import FSDP2_ON_CPU, run_ddp_script

SCRIPT = Path(__file__).parents[1] / "distributed" / "ddp_early_stopping.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_ranks_agree_and_restore_best(tmp_path):
    run_ddp_script(SCRIPT, tmp_path, timeout=240)
    for scenario in ("unsynced", "checkpoint"):
        r0 = torch.load(tmp_path / f"{scenario}_rank0.pt", weights_only=False)
        r1 = torch.load(tmp_path / f"{scenario}_rank1.pt", weights_only=False)
        v0 = [v for _, v, _ in r0["records"]]
        v1 = [v for _, v, _ in r1["records"]]
        if scenario == "unsynced":
            assert all(a != b for a, b in zip(v0, v1)), "ranks must see different local values"
            agreed = [(torch.tensor(a) + torch.tensor(b)).div(2).item() for a, b in zip(v0, v1)]
        else:
            assert v0 == v1
            agreed = v0
        best_epoch = agreed.index(min(agreed))
        assert best_epoch < len(agreed) - 1
        for r in (r0, r1):
            assert r["best_epoch"] == best_epoch and r["restored"]
            if scenario == "unsynced":  # the mean of the two local values (float32 rounding aside)
                assert r["best_score"].item() == pytest.approx(agreed[best_epoch], rel=1e-6)
            else:  # identical on all ranks already: kept bit for bit
                assert r["best_score"].item() == agreed[best_epoch]
        # identical best score, decisions and step on both ranks
        assert torch.equal(r0["best_score"], r1["best_score"])
        assert (r0["best_step"], r0["stopped_epoch"]) == (r1["best_step"], r1["stopped_epoch"])
        # each rank holds exactly its weights of the best epoch; parameters identical across ranks
        for r in (r0, r1):
            ref = r["records"][best_epoch][2]
            for k, v in r["final"].items():
                assert torch.equal(v, ref[k]), (scenario, k)
        for k in r0["final"]:
            if "running" not in k and "num_batches" not in k:
                assert torch.equal(r0["final"][k], r1["final"][k]), (scenario, k)
        # and the restored weights are not simply the last ones
        assert not torch.equal(r0["final"]["net.0.weight"], r0["records"][-1][2]["net.0.weight"])
        # what is reported: unsynced, one warning (rank 0, once) says the value used is in no log, and which
        assert r1["warnings"] == [] and r1["said"] == []  # rank-zero only
        restored = [line for line in r0["said"] if line.startswith("EarlyStopping: restored")]
        assert len(restored) == 1
        if scenario == "unsynced":
            (msg,) = r0["warnings"]
            assert f"`val_loss` differs across the 2 ranks ({v0[0]:.6g}, {v1[0]:.6g})" in msg
            assert f"the loggers show rank 0's ({v0[0]:.6g})" in msg
            assert f"uses their mean ({agreed[0]:.6g}) on every rank" in msg and "sync_dist=True" in msg
            assert restored[0].endswith(f"val_loss={agreed[best_epoch]:.4f} (the mean over ranks)")
        else:
            assert r0["warnings"] == [] and restored[0].endswith(f"val_loss={agreed[best_epoch]:.4f}")


FSDP_SCRIPT = Path(__file__).parents[1] / "distributed" / "fsdp_cpu_snapshot.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_local_shard_snapshots_on_cpu(tmp_path):
    """FSDP1 (flat parameters, with and without use_orig_params) and FSDP2 on 2 CPU ranks, no Lightning."""
    run_ddp_script(FSDP_SCRIPT, tmp_path, timeout=240)
    ranks = [torch.load(tmp_path / f"fsdp_rank{r}.pt", weights_only=False) for r in (0, 1)]
    kinds = ("fsdp1", "fsdp1_orig_params", "fsdp2") if FSDP2_ON_CPU else ("fsdp1", "fsdp1_orig_params")
    assert sorted(ranks[0]) == sorted(kinds)
    for kind in kinds:
        per_rank = [r[kind] for r in ranks]
        full = per_rank[0]["full_param_elems"]
        assert full == 4 * 8 + 8 + 8 + 8 + 8 + 1  # the hand-counted parameters of the test net
        for res in per_rank:
            assert res["sharded"] and res["moved"] and res["restored"], (kind, res)
            # each rank holds only its shard: at most half of the parameters (plus FSDP1's padding)
            assert res["local_param_elems"] <= full // 2 + 9, (kind, res)
        if kind.startswith("fsdp1"):  # one flat parameter, padded to an even split
            assert [r["local_param_elems"] for r in per_rank] == [(full + 1) // 2] * 2
        else:  # dim-0 shards of every parameter add up to the whole model
            assert sum(r["local_param_elems"] for r in per_rank) == full


SPAWN_SCRIPT = Path(__file__).parents[1] / "distributed" / "ddp_spawn_early_stopping.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_spawn_main_process_gets_the_results(tmp_path):
    """``ddp_spawn`` fits run on copies of the callbacks; the user's object must get the results."""
    run_ddp_script(SPAWN_SCRIPT, tmp_path, timeout=240)
    main = torch.load(tmp_path / "main.pt", weights_only=False)
    r0, r1 = (torch.load(tmp_path / f"worker_rank{r}.pt", weights_only=False) for r in (0, 1))
    v0, v1 = ([v for _, v, _ in r["records"]] for r in (r0, r1))
    assert all(a != b for a, b in zip(v0, v1)), "ranks must see different local values"
    agreed = [(torch.tensor(a) + torch.tensor(b)).div(2).item() for a, b in zip(v0, v1)]
    best_epoch = agreed.index(min(agreed))
    assert 0 < best_epoch < len(agreed) - 1
    for r in (r0, r1):
        assert r["best_epoch"] == best_epoch
    # the launching process's callback holds the workers' results ...
    assert main["best_epoch"] == best_epoch and main["best_step"] == r0["best_step"] == (best_epoch + 1) * 4
    assert torch.equal(main["best_score"], r0["best_score"])
    assert main["stopped_epoch"] == r0["stopped_epoch"] == len(agreed) - 1
    assert main["stopping_reason"] == EarlyStoppingReason.PATIENCE_EXHAUSTED.value and main["restored"]
    assert main["callback_metrics"]["early_stopping/best_epoch"] == best_epoch
    # ... and its model the restored best weights of rank 0 (Lightning copies rank 0's final weights back)
    ref = r0["records"][best_epoch][2]
    assert all(torch.equal(main["final"][k], ref[k]) for k in ref)
    assert not torch.equal(main["final"]["net.0.weight"], r0["records"][-1][2]["net.0.weight"])
