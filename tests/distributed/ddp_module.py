"""DDP (2 CPU processes, gloo) fit of a RegularizedModule; each rank writes what it saw to out_dir/rank{r}.pt.

Started by tests/module/test_regularized.py::test_ddp_two_process_fit through ``run_ddp_script``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import DecayRule, RegularizedModule
from tests.helpers import LMBlock, TinyLMModule, end_process_group, fast_trainer

LR, WD, STEPS = 0.01, 0.1, 8


class Net(RegularizedModule):
    def __init__(self) -> None:
        super().__init__(lr=LR, weight_decay=WD, layer_decay=0.5)
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(*(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(2)))
        self.head = nn.Linear(8, 4)
        self.idle = nn.Linear(4, 4)  # exactly-zero gradients: only AdamW's decoupled decay moves it

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.head(self.blocks(self.stem(x))), y)
        return loss + sum((p * 0).sum() for p in self.idle.parameters())

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 4, generator=g))
        return DataLoader(data, batch_size=4)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    collect = Collect()
    logging.getLogger("lightning.pytorch").addHandler(collect)
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)
    L.seed_everything(0)
    model = Net()
    idle0 = model.idle.weight.detach().clone()
    trainer = fast_trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2)
    trainer.fit(model)
    groups = [
        {k: g[k] for k in ("name", "param_names", "lr", "initial_lr", "weight_decay", "layer_id")}
        for g in trainer.optimizers[0].param_groups
    ]
    # Second scenario on the same 2-rank gloo group: raw torch FSDP(use_orig_params=True) on CPU. The
    # original parameters become 1-D shards under `_fsdp_wrapped_module.` names; groups must not change.
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from lightning_reg import weight_decay_param_groups

    lm = TinyLMModule()
    rule = DecayRule(embeddings=True)
    reference = [(g["name"], g["param_names"]) for g in weight_decay_param_groups(lm, 0.1, rule=rule)]
    fsdp = FSDP(
        lm, use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({LMBlock}), device_id=torch.device("cpu")
    )
    sharded = weight_decay_param_groups(fsdp, 0.1, rule=DecayRule(embeddings=True))
    torch.save(
        {
            "fsdp_reference": reference,
            "fsdp_groups": [(g["name"], g["param_names"]) for g in sharded],
            "fsdp_raw": [(n, p.ndim, p.numel()) for n, p in fsdp.named_parameters()],
            "rank": trainer.global_rank,
            "steps": trainer.global_step,
            "groups": groups,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "idle0": idle0,
            "tables": [m for m in collect.messages if m.startswith("Net: AdamW")],  # the one-line report
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    end_process_group()
