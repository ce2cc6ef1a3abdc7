"""Sharded snapshots on CPU without Lightning: 2 processes (gloo), FSDP1 and FSDP2 (``fully_shard``).

Usage: python fsdp_cpu_snapshot.py OUT_DIR

Lightning's FSDP strategies need a GPU, so this drives ``lightning_reg.early_stopping.snapshot`` directly:
train a few
steps, snapshot each rank's local shard, train more, restore, and compare the gathered full state dict
with the one at the snapshot. Each rank writes ``fsdp_rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_reg.early_stopping.snapshot import WeightSnapshot, is_sharded_module, local_snapshot_tensors

FSDP2_ON_CPU = torch.__version__ >= "2.6"  # FSDP2 creates CUDA streams unconditionally before torch 2.6


def _full(m: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in m.state_dict().items()
    }


def _step(model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator) -> None:
    opt.zero_grad()
    model(torch.randn(16, 4, generator=g)).pow(2).mean().backward()
    opt.step()


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.fsdp import FullyShardedDataParallel

    from lightning_reg._shared.torch_compat import fully_shard

    results = {}
    try:
        kinds = ("fsdp1", "fsdp1_orig_params") + (("fsdp2",) if FSDP2_ON_CPU else ())
        for kind in kinds:
            torch.manual_seed(0)
            net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
            n_params = sum(p.numel() for p in net.parameters())
            if kind == "fsdp2":
                fully_shard(net)
                model = net
            else:
                model = FullyShardedDataParallel(
                    net, device_id=torch.device("cpu"), use_orig_params=kind.endswith("orig_params")
                )
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            g = torch.Generator().manual_seed(rank)

            _step(model, opt, g)
            local = local_snapshot_tensors(model)
            snap = WeightSnapshot("cpu")
            snap.capture(local)
            ref = _full(model)
            _step(model, opt, g)
            _step(model, opt, g)
            moved = not torch.equal(_full(model)["0.weight"], ref["0.weight"])
            snap.restore(local_snapshot_tensors(model))
            now = _full(model)
            param_elems = sum(
                t.numel() for k, t in local.items() if "running" not in k and "num_batches" not in k
            )
            results[kind] = {
                "sharded": is_sharded_module(model),
                "local_param_elems": param_elems,
                "full_param_elems": n_params,
                "moved": moved,
                "restored": all(torch.equal(now[k], ref[k]) for k in ref),
                "keys": sorted(ref),
            }
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out) / f"fsdp_rank{rank}.pt")


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    # fork: the children inherit the imports (torch, lightning) instead of paying for them again
    mp.start_processes(worker, args=(sys.argv[1], free_port), nprocs=2, join=True, start_method="fork")
