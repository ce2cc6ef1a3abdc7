"""Two nodes x two processes on this machine (CPU, gloo): what changes when local rank != global rank.

``multinode_all.py`` is started once per node (``NODE_RANK=0/1``, ``MASTER_ADDR=127.0.0.1``, one free
``MASTER_PORT``), each node in its own process group under a timeout; Lightning's ``ddp`` launcher starts
2 local ranks per node (global ranks 0-3, local ranks 0, 1, 0, 1). Every callback of the library and
``RegularizedModule`` run in one fit, then in a fit resumed from a mid-run checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lightning_reg._shared.lightning_compat import LIGHTNING_EXACT_MID_EPOCH_RESUME
from tests.distributed.multinode_all import FREEZE_EPOCH, PATIENCE, RESUME_FROM, launch_multinode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str], list[dict]]:
    out = tmp_path_factory.mktemp("multinode")
    logs = launch_multinode(out, timeout=200)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(4)]
    return out, logs, ranks


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_four_global_ranks_on_two_nodes(job) -> None:
    _, _, ranks = job
    seen = [(r["global_rank"], r["local_rank"], r["node_rank"], r["world_size"]) for r in ranks]
    assert seen == [(0, 0, 0, 4), (1, 1, 0, 4), (2, 0, 1, 4), (3, 1, 1, 4)]
    assert [r["env_node_rank"] for r in ranks] == ["0", "0", "1", "1"]


def test_rank_zero_lines_print_once_per_job_not_once_per_node(job) -> None:
    _, logs, _ = job
    text = logs[0] + logs[1]
    fit_start_lines = [
        r"EarlyStopping: val_loss \(min\), patience",
        r"GradientMonitor:",
        r"GradientClipping:",
        r"StochasticDepthScheduler:",
        r"OverfittingMonitor: loss \(train_loss vs val_loss",
        r"FreezeBatchNorm:",
    ]
    for pattern in fit_start_lines:  # one line per fit, two fits, all from global rank 0 (node 0)
        assert len(re.findall(pattern, text)) == 2, (pattern, text[-4000:])
        assert not re.search(pattern, logs[1]), (pattern, logs[1][-4000:])
    assert len(re.findall(r"EarlyStopping: restored epoch", text)) == 2, text[-4000:]
    assert len(re.findall(r"ReproducibleResume: restoring the RNG states of 4 rank", text)) == 1, text[-4000:]


def test_checkpoints_are_written_once_by_global_rank_zero(job) -> None:
    out, _, ranks = job
    writes = (out / "writes.txt").read_text().split()
    writers, paths = set(writes[0::2]), writes[1::2]
    assert writers == {"0"}
    assert len(paths) == len(set(paths))  # each file written once, not once per node
    stopped = ranks[0]["stopped_epoch"]
    expected = [f"epoch={e}.ckpt" for e in range(stopped + 1)]
    assert sorted(p.name for p in (out / "ckpt_full").iterdir()) == expected
    assert sorted(p for p in paths if p.startswith("ckpt_full/")) == [f"ckpt_full/{n}" for n in expected]
    saved = torch.load(out / "ckpt_full" / RESUME_FROM, weights_only=False)
    rng = saved["callbacks"]["ReproducibleResume"]
    assert rng["world_size"] == 4 and len(rng["ranks"]) == 4  # every rank's states, gathered into one file
    states = [s["torch"] for s in rng["ranks"]]
    assert all(not torch.equal(states[0], s) for s in states[1:])


def test_early_stopping_decisions_and_restored_weights_agree_on_all_four_ranks(job) -> None:
    _, _, ranks = job
    own = [[c["own_val_loss"] for c in r["checks"]] for r in ranks]
    assert len({tuple(v) for v in own}) == 4  # the ranks saw different values...
    agreed = [
        [(c["epoch"], c["best_score"], c["wait_count"], c["should_stop"]) for c in r["checks"]] for r in ranks
    ]
    assert all(a == agreed[0] for a in agreed)  # ...and decided alike at every check
    first = ranks[0]
    assert first["stopping_reason"] == "PATIENCE_EXHAUSTED" and first["restored"]
    assert first["stopped_epoch"] == first["best_epoch"] + PATIENCE < len(first["checks"]) + PATIENCE
    assert first["best_epoch"] >= FREEZE_EPOCH
    for r in ranks:
        assert (r["best_epoch"], r["stopped_epoch"], r["restored"]) == (
            first["best_epoch"],
            first["stopped_epoch"],
            True,
        )
        # each rank restored its own snapshot of the best epoch...
        assert _same(r["final_weights"], r["validated_weights"][r["best_epoch"]])
        # ...and those are the same weights on every rank (BatchNorm frozen: buffers broadcast, not updated)
        assert _same(r["final_weights"], first["final_weights"])
        assert all(not c["bn_training"] for c in r["checks"][FREEZE_EPOCH:])
        assert [c["grad_norm"] for c in r["checks"]] == [c["grad_norm"] for c in first["checks"]]
        assert all(c["drop_rate"] > 0 for c in r["checks"])


def test_each_rank_resumes_its_own_rng_states(job) -> None:
    _, _, ranks = job
    saved_at = int(RESUME_FROM.split("=")[1].split(".")[0])
    for r in ranks:
        res = r["resumed"]
        assert res["restored_at"] == "on_fit_start"  # an end-of-epoch checkpoint
        # the generator state this rank had when the checkpoint was written, not another rank's
        assert torch.equal(res["rng_at_fit_start"], r["rng_at_save"][saved_at]), r["global_rank"]
        if not LIGHTNING_EXACT_MID_EPOCH_RESUME:
            continue  # Lightning < 2.5 continues a checkpoint written at validation end elsewhere
        checks = [c["own_val_loss"] for c in res["checks"]]
        assert checks == [c["own_val_loss"] for c in r["checks"][saved_at + 1 :]]
        assert (res["best_epoch"], res["stopped_epoch"]) == (r["best_epoch"], r["stopped_epoch"])
        assert _same(res["final_weights"], r["final_weights"])
    states = [r["rng_at_save"][saved_at] for r in ranks]
    assert all(not torch.equal(states[0], s) for s in states[1:])  # a swapped restore could not pass
