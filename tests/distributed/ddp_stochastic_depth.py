"""DDP (2 CPU processes, gloo) run of StochasticDepthScheduler without ``find_unused_parameters``.

Usage: ``python ddp_stochastic_depth.py OUT_DIR``; each rank writes ``OUT_DIR/rank{r}.pt`` with the rates it
saw per step, its final weights and the DDP settings. Started by
``tests/stochastic_depth/test_callback.py::test_ddp_two_cpu_processes_without_find_unused_parameters``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_reg import StochasticDepthScheduler  # noqa: E402
from tests.helpers import (  # noqa: E402
    LitClassifier,
    RateRecorder,
    ResMLP,
    classification_loader,
    end_process_group,
    fast_trainer,
)


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    # two per-sample blocks and one whole-batch block: every parameter stays in the graph in both modes
    model = ResMLP([0.05] * 3, modes=["row", "batch", "row"])
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cb = StochasticDepthScheduler(max_rate=0.3, rule="huang", schedule="warmup", cutoff=3)
    rec = RateRecorder()
    trainer = fast_trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=[cb, rec])
    lit = LitClassifier(model)
    trainer.fit(lit, classification_loader(32, 4))  # 16 samples per rank, 4 per batch -> 4 steps per epoch
    out = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "find_unused_parameters": trainer.strategy._ddp_kwargs.get("find_unused_parameters", False),
        "rates": rec.rows,
        "weights": {k: v.detach().clone() for k, v in lit.model.state_dict().items()},
        "init": init,
        "final_rates": [b.drop_path.p for b in lit.model.blocks],
    }
    torch.save(out, out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    end_process_group()
