"""Tests for RegularizedModule and WarmupCosineLR (short CPU fits)."""

from __future__ import annotations

import logging
import math
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import DecayRule, RegularizedModule, WarmupCosineLR, weight_decay_param_groups
from tests.helpers import LMBlock, TinyLMModule, fast_trainer

CONFIGS = Path(__file__).parents[1] / "configs"


def cpu_trainer(**kw) -> L.Trainer:
    return fast_trainer(**{"max_steps": 4, "accelerator": "cpu", "devices": 1, **kw})


def loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)), batch_size=batch_size
    )


class ZeroGradNet(RegularizedModule):
    """`idle*` parameters get exactly-zero gradients: AdamW then only applies the decoupled weight decay."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.idle = nn.Linear(4, 4)
        self.idle_norm = nn.LayerNorm(4)
        with torch.no_grad():
            self.idle_norm.weight.uniform_(0.5, 1.5)
            self.idle_norm.bias.uniform_(-1, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.norm(self.lin(x)), y)
        idle = [*self.idle.parameters(), *self.idle_norm.parameters()]
        return loss + sum((p * 0).sum() for p in idle)


def test_adamw_decays_exactly_the_decay_group():
    torch.manual_seed(0)
    lr, wd, steps = 0.01, 0.1, 4
    model = ZeroGradNet(lr=lr, weight_decay=wd)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cpu_trainer(max_steps=steps).fit(model, loader())
    expected = before["idle.weight"].clone()
    for _ in range(steps):
        expected.mul_(1 - lr * wd)  # AdamW's decoupled decay; the Adam update of a zero gradient is 0
    assert torch.equal(model.idle.weight.detach(), expected)
    assert not torch.equal(expected, before["idle.weight"])
    for name in ("idle.bias", "idle_norm.weight", "idle_norm.bias"):  # no decay: untouched
        assert torch.equal(model.get_parameter(name).detach(), before[name]), name
    assert not torch.equal(model.lin.weight.detach(), before["lin.weight"])  # it did train


class Stack(RegularizedModule):
    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = 1e-3,
        weight_decay: float | None = 0.05,
        decay_rule: DecayRule | None = None,
        layer_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            decay_rule=decay_rule,
            layer_decay=layer_decay,
            lr_scheduler=lr_scheduler,
        )
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(*(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(3)))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def train_dataloader(self):
        return loader()


class RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_layer_decay_with_warmup_cosine_per_step_by_hand():
    lr, decay = 0.2, 0.5
    model = Stack(lr=lr, layer_decay=decay, lr_scheduler=partial(WarmupCosineLR, warmup_steps=2))
    rec = RecordLR()
    cpu_trainer(max_steps=-1, max_epochs=2, callbacks=[rec]).fit(model)  # 4 batches x 2 epochs = 8 steps
    groups = model.trainer.optimizers[0].param_groups
    sched = model.trainer.lr_scheduler_configs[0]
    assert sched.interval == "step" and sched.scheduler.total_steps == 8  # filled from the Trainer
    # layers: stem 0, blocks 1..3, head 4 -> base lr * 0.5 ** (4 - id)
    assert [g["name"] for g in groups][:3] == ["layer_0_decay", "layer_0_no_decay", "layer_1_decay"]
    base = [lr * decay ** (4 - g["layer_id"]) for g in groups]
    for step, lrs in enumerate(rec.lrs):
        factor = step / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / 6))
        assert lrs == pytest.approx([b * factor for b in base], abs=1e-12), step
    assert len(rec.lrs) == 8


def test_warmup_longer_than_the_run_fails_clearly_but_not_under_fast_dev_run():
    sched = partial(WarmupCosineLR, warmup_steps=100)
    # fast_dev_run is a smoke test: the warm-up is clamped instead of failing every warm-up config
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False)
    model = Stack(lr_scheduler=sched)
    trainer.fit(model)
    assert model.trainer.lr_scheduler_configs[0].scheduler.total_steps == 101
    # a real run shorter than its warm-up (4 batches x 2 epochs = 8 steps) is a configuration error
    with pytest.raises(ValueError, match=r"warmup_steps=100 .*8 optimizer steps"):
        cpu_trainer(max_steps=-1, max_epochs=2).fit(Stack(lr_scheduler=sched))


def test_layer_decay_with_the_optimizers_own_lr():
    model = Stack(lr=None, layer_decay=0.5, optimizer=partial(torch.optim.SGD, lr=0.4))
    opt = model.configure_optimizers()["optimizer"]
    assert {g["layer_id"]: g["lr"] for g in opt.param_groups} == {0: 0.025, 1: 0.05, 2: 0.1, 3: 0.2, 4: 0.4}
    assert all(g["initial_lr"] == g["lr"] for g in opt.param_groups)


def test_lightning_cli_yaml_configures_optimizer_and_scheduler(monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["cli"])
    args = ["--config", str(CONFIGS / "regularized_module.yaml")]
    cli = LightningCLI(Stack, run=False, args=args, save_config_callback=None)
    rec = RecordLR()
    cli.trainer.callbacks.append(rec)
    cli.trainer.fit(cli.model)
    opt = cli.trainer.optimizers[0]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert isinstance(cli.trainer.lr_scheduler_configs[0].scheduler, WarmupCosineLR)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["layer_4_no_decay"]["param_names"] == ["head.weight", "head.bias"]  # exclude: head.*
    assert by_name["layer_1_decay"]["weight_decay"] == 0.01
    # warm-up 2 steps, cosine over steps 2..6: factor 0, 1/2, 1, (1 + cos(pi/4))/2, 1/2, (1 - cos(pi/4))/2
    c = math.sqrt(0.5)
    head = [0.0, 0.05, 0.1, 0.05 * (1 + c), 0.05, 0.05 * (1 - c)]
    assert [x[-1] for x in rec.lrs] == pytest.approx(head, abs=1e-12)
    assert [x[0] for x in rec.lrs] == pytest.approx([v * 0.5**4 for v in head], abs=1e-12)  # stem


def test_group_report_one_line_by_default_table_at_verbose_2(caplog):
    model = Stack(lr=0.01)
    with caplog.at_level(logging.INFO):
        cpu_trainer(max_steps=2).fit(model)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Stack:")]
    assert lines == [
        "Stack: AdamW, decay 5 tensors (wd 0.05); no_decay 11 tensors (wd 0) (verbose=2: the table)."
    ]
    caplog.clear()
    model.configure_regularization(lr=0.01, verbose=0)
    with caplog.at_level(logging.INFO):
        cpu_trainer(max_steps=2).fit(model)
    assert not [r for r in caplog.records if r.getMessage().startswith("Stack:")]
    model.configure_regularization(lr=0.01, verbose=2)
    with caplog.at_level(logging.INFO):
        cpu_trainer(max_steps=2).fit(model)
    tables = [r.getMessage() for r in caplog.records if "parameter groups" in r.getMessage()]
    assert len(tables) == 1
    lines = tables[0].splitlines()
    assert lines[0] == "Stack: AdamW parameter groups"
    # decay: stem.weight, 3 block Linear weights, head.weight; no_decay: 5 biases + 3 LayerNorms x 2
    assert lines[2].split() == ["decay", "5", str(32 + 3 * 64 + 32), "0.05", "0.01"]
    assert lines[3].split() == ["no_decay", "11", str(8 + 3 * 8 + 4 + 3 * 16), "0", "0.01"]


def test_mixin_with_another_lightning_base():
    class Base(L.LightningModule):
        def __init__(self, width: int = 2, **kw) -> None:
            super().__init__(**kw)
            self.width = width

    class Mixed(RegularizedModule, Base):
        def __init__(self) -> None:
            super().__init__(width=5, lr=0.5, weight_decay=0.2)
            self.fc = nn.Linear(2, 2)

    m = Mixed()
    assert m.width == 5
    opt = m.configure_optimizers()["optimizer"]
    assert [(g["param_names"], g["weight_decay"], g["lr"]) for g in opt.param_groups] == [
        (["fc.weight"], 0.2, 0.5),
        (["fc.bias"], 0.0, 0.5),
    ]


def test_groups_added_later_get_the_decay_split_names_and_settings():
    """BaseFinetuning.unfreeze_and_add_param_group adds one unnamed group carrying the optimizer's built-in
    defaults (AdamW: weight_decay=0.01; SGD: 0): it must be split like the configured groups."""
    from lightning.pytorch.callbacks import BaseFinetuning

    for optimizer, keep in ((torch.optim.AdamW, True), (torch.optim.SGD, False), (torch.optim.AdamW, False)):
        model = Stack(optimizer=optimizer, weight_decay=0.3)
        model.configure_regularization(optimizer=optimizer, lr=0.01, weight_decay=0.3, keep_param_names=keep)
        model.blocks.requires_grad_(False)
        opt = model.configure_optimizers()["optimizer"]
        assert opt.defaults["weight_decay"] == 0.3 and opt.defaults["lr"] == 0.01
        n_before = len(opt.param_groups)
        BaseFinetuning.unfreeze_and_add_param_group(model.blocks, opt, lr=0.001)  # keep=True crashed before
        added = opt.param_groups[n_before:]
        assert [g["name"] for g in added] == ["blocks_decay", "blocks_no_decay"]
        by_hand = {  # Linear weights decayed; biases and LayerNorm parameters not
            "blocks_decay": [f"blocks.{i}.1.weight" for i in range(3)],
            "blocks_no_decay": [f"blocks.{i}.{j}" for i in range(3) for j in ("0.weight", "0.bias", "1.bias")]
        }
        for g in added:
            names = {id(p): n for n, p in model.named_parameters()}
            assert sorted(names[id(p)] for p in g["params"]) == sorted(by_hand[g["name"]])
            assert g["weight_decay"] == (0.3 if g["name"] == "blocks_decay" else 0.0)
            assert g["lr"] == 0.001
            assert ("param_names" in g) is keep
            if keep:
                assert sorted(g["param_names"]) == sorted(by_hand[g["name"]])
        # BackboneFinetuning later sets param_groups[-1]["lr"] only: the sibling follows at the next step
        opt.param_groups[-1]["lr"] = 0.004
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        assert [g["lr"] for g in opt.param_groups[n_before:]] == [0.004, 0.004]


class Backboned(RegularizedModule):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.backbone(x)), y)

    def train_dataloader(self):
        return loader()


def test_backbone_finetuning_fit_with_param_names_and_lr_monitor(tmp_path):
    from lightning.pytorch.callbacks import BackboneFinetuning, LearningRateMonitor

    from tests.memory_logger import MemoryLogger

    model = Backboned(lr=0.01, weight_decay=0.2)  # AdamW; its built-in default would be 0.01
    logger = MemoryLogger()
    trainer = fast_trainer(
        max_epochs=3, logger=logger, log_every_n_steps=1, default_root_dir=tmp_path,
        callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1), LearningRateMonitor()],
    )
    trainer.fit(model)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert set(groups) == {"decay", "no_decay", "backbone_decay", "backbone_no_decay"}
    assert groups["backbone_decay"]["weight_decay"] == 0.2
    assert groups["backbone_no_decay"]["weight_decay"] == 0
    assert sorted(groups["backbone_decay"]["param_names"]) == ["backbone.0.weight", "backbone.2.weight"]
    assert groups["backbone_decay"]["lr"] == groups["backbone_no_decay"]["lr"]
    keys = {k for _, row in logger.calls for k in row}
    assert {"lr-AdamW/backbone_decay", "lr-AdamW/backbone_no_decay"} <= keys


def test_edited_groups_are_validated():
    class Dup(Stack):
        def param_groups(self):
            groups = super().param_groups()
            groups.append({"name": "extra", "params": [self.head.weight], "weight_decay": 0.0})
            return groups

    with pytest.raises(ValueError, match=r"'head.weight' is in two groups: 'decay' and 'extra'"):
        Dup().configure_optimizers()


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"-1\.0"):
        Stack(weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"\(0, 1\].*1\.5"):
        Stack(layer_decay=1.5)
    with pytest.raises(ValueError, match=r"'step', 'epoch'.*'batch'"):
        RegularizedModule(lr_scheduler_interval="batch")
    with pytest.warns(UserWarning, match=r"\['nope\*'\] select no trainable parameter") as rec:
        Stack(decay_rule=DecayRule(exclude=["nope*", "head.*"])).configure_optimizers()
    assert len([w for w in rec if "select no" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="warmup_steps=5.*got 3"):
        WarmupCosineLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), warmup_steps=5, total_steps=3)


def test_resume_ends_where_the_uninterrupted_run_ends(tmp_path):
    def make():
        L.seed_everything(0)
        return Stack(lr=0.05, layer_decay=0.7, lr_scheduler=partial(WarmupCosineLR, warmup_steps=3))

    full = make()
    cpu_trainer(max_steps=-1, max_epochs=2, deterministic=True).fit(full)

    class StopAfterFirstEpoch(Callback):  # an interruption: same Trainer config, run cut short
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    part = make()
    trainer = cpu_trainer(max_steps=-1, max_epochs=2, deterministic=True, callbacks=[StopAfterFirstEpoch()])
    trainer.fit(part)
    assert trainer.global_step == 4
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = make()
    trainer = cpu_trainer(max_steps=-1, max_epochs=2, deterministic=True)
    trainer.fit(resumed, ckpt_path=tmp_path / "mid.ckpt")
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 8
    assert trainer.global_step == 8
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(full.head.weight, part.head.weight)


@pytest.mark.slow  # ~10-15 s idle (two fresh interpreters); ~50 s on the contended 2-core machine
@pytest.mark.timeout(240)
def test_ddp_two_process_fit(tmp_path):
    from tests.distributed.launch import run_ddp_script

    run_ddp_script(Path(__file__).parents[1] / "distributed" / "ddp_module.py", tmp_path, timeout=180)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 8  # 32 samples / 2 ranks / batch 4 = 4 steps per epoch, 2 epochs
    assert r0["groups"] == r1["groups"]
    for k, v in r0["state_dict"].items():
        assert torch.equal(v, r1["state_dict"][k]), k
    # layers: stem 0, blocks 1-2, head + idle 3 -> lr 0.01 * 0.5 ** (3 - id)
    for g in r0["groups"]:
        assert g["lr"] == g["initial_lr"] == pytest.approx(0.01 * 0.5 ** (3 - g["layer_id"]))
        assert g["weight_decay"] == (0.0 if "no_decay" in g["name"] else 0.1)
    by_name = {g["name"]: g for g in r0["groups"]}
    assert by_name["layer_3_decay"]["param_names"] == ["head.weight", "idle.weight"]
    expected = r0["idle0"].clone()
    for _ in range(r0["steps"]):
        expected.mul_(1 - 0.01 * 0.1)
    assert torch.equal(r0["state_dict"]["idle.weight"], expected)
    assert len(r0["tables"]) == 1 and r1["tables"] == []  # logged once, on rank zero only
    # raw torch FSDP(use_orig_params=True), 2 CPU ranks: 1-D shards under wrapped names, same groups
    for r in (r0, r1):
        assert all(ndim == 1 and "_fsdp_wrapped_module" in n for n, ndim, _ in r["fsdp_raw"])
        assert r["fsdp_groups"] == r["fsdp_reference"]
    assert (
        sum(x[2] for x in r0["fsdp_raw"]) + sum(x[2] for x in r1["fsdp_raw"]) == 32 * 16 + 2 * (16 + 272) + 16
    )


@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_fsdp_use_orig_params_groups_match_unsharded_classification():
    from lightning.pytorch.strategies import FSDPStrategy

    reference = [(g["name"], g["param_names"]) for g in TinyLMModule().param_groups()]
    model = TinyLMModule()
    strategy = FSDPStrategy(use_orig_params=True, auto_wrap_policy={LMBlock})
    trainer = fast_trainer(accelerator="cuda", devices=1, strategy=strategy, max_steps=2)
    trainer.fit(model)
    raw = [n for n, _ in model.named_parameters()]
    assert any("_fsdp_wrapped_module" in n for n in raw)  # the groups were built from wrapped names
    groups = trainer.optimizers[0].param_groups
    assert [(g["name"], g["param_names"]) for g in groups] == reference
    assert "tok.weight" in groups[1]["param_names"]  # tied embedding excluded once


def test_optimizer_arguments_in_yaml_are_one_source_of_truth(monkeypatch):
    """`model.optimizer.init_args: {lr, weight_decay}` used to be silently overridden by the module's own."""
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["cli"])
    base = ["--trainer.logger=false", "--trainer.max_steps=1", "--trainer.enable_progress_bar=false"]
    sgd = '{"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "weight_decay": 0.0005}}'
    with pytest.raises(ValueError, match=r"`lr` is set twice: SGD\(lr=0\.1\).*lr=0\.001 on Stack"):
        LightningCLI(Stack, run=False, args=[*base, f"--model.optimizer={sgd}"], save_config_callback=None)
    # the module's lr=None / weight_decay=None: the optimizer's values are the only source
    args = [*base, f"--model.optimizer={sgd}", "--model.lr=null", "--model.weight_decay=null"]
    cli = LightningCLI(Stack, run=False, args=args, save_config_callback=None)
    opt = cli.model.configure_optimizers()["optimizer"]
    assert {(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups} == {
        ("decay", 0.1, 0.0005),
        ("no_decay", 0.1, 0.0),
    }
    # the same value in both places is no conflict; the optimizer's defaults alone are none either
    Stack(optimizer=partial(torch.optim.SGD, lr=1e-3))
    with pytest.raises(ValueError, match=r"`weight_decay` is set twice"):
        Stack(optimizer=partial(torch.optim.AdamW, weight_decay=0.1))


def test_optimizer_switched_in_yaml_does_not_trip_over_values_carried_from_the_default(monkeypatch):
    """LightningCLI keeps init_args the new class accepts when a config changes class_path: SGD gets AdamW's
    default weight_decay (0.01) and lr (0.001) although the user wrote neither. Those carried values are taken
    as such (a warning says so) and the module's values are used; a value the default optimizer does not
    have is still a conflict."""
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["cli"])
    base = ["--trainer.logger=false", "--trainer.max_steps=1", "--trainer.enable_progress_bar=false"]
    sgd = '{"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}}'
    args = [*base, f"--model.optimizer={sgd}", "--model.weight_decay=0.05", "--model.lr=0.1"]
    with pytest.warns(UserWarning, match=r"SGD has weight_decay=0\.01, the default of AdamW.*carries init"):
        cli = LightningCLI(Stack, run=False, args=args, save_config_callback=None)
    opt = cli.model.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9
    assert {(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups} == {
        ("decay", 0.1, 0.05),
        ("no_decay", 0.1, 0.0),
    }
    with pytest.raises(ValueError, match=r"`weight_decay` is set twice: SGD\(weight_decay=0\.02\)"):
        Stack(optimizer=partial(torch.optim.SGD, lr=1e-3, weight_decay=0.02))


def test_decay_rule_as_a_mapping_is_the_yaml_form():
    assert Stack(decay_rule={"embeddings": True, "exclude": ["head"]}).decay_rule == DecayRule(
        embeddings=True, exclude=["head"]
    )
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['embedings'\]; valid keys: \['bias'"):
        Stack(decay_rule={"embedings": True})


def test_reduce_lr_on_plateau_under_the_default_interval():
    """The default per-step interval failed: 'ReduceLROnPlateau conditioned on metric val_loss which is not
    available'. With interval None the module steps it per epoch, after validation."""

    class Plateau(Stack):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.tensor(1.0))  # never improves: patience 0 halves the lr every epoch

        def val_dataloader(self):
            return loader(8)

    model = Plateau(lr=0.1, lr_scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0))
    trainer = cpu_trainer(max_steps=-1, max_epochs=3, limit_train_batches=2)
    trainer.fit(model)
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "epoch" and config.monitor == "val_loss"
    # epoch 0 sets the best (1.0); epochs 1 and 2 do not improve: two reductions by 0.1
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 * 0.1)


def test_on_before_optimizer_step_without_super_is_refused_when_a_penalty_is_set():
    from lightning_reg.penalties import WeightPenalty

    class NoSuper(Stack):
        def on_before_optimizer_step(self, optimizer):
            self.seen = True

    class WithSuper(Stack):
        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)

    model = NoSuper()
    model.weight_penalty = WeightPenalty(l2=0.1)
    with pytest.raises(RuntimeError, match=r"NoSuper.on_before_optimizer_step does not call super"):
        cpu_trainer(max_steps=1).fit(model)
    model.weight_penalty = WeightPenalty(l2=0.1, automatic=False)  # nothing to skip: fine
    cpu_trainer(max_steps=1).fit(model)
    model = WithSuper()
    model.weight_penalty = WeightPenalty(l2=0.1)
    cpu_trainer(max_steps=1).fit(model)


def test_layer_decay_warns_when_one_layer_id_holds_most_decayed_tensors():
    from torchvision.models import resnet18

    with torch.device("meta"):
        m = resnet18()
    with pytest.warns(UserWarning, match=r"layer id 3 holds 16 of the 21 decayed tensors of ResNet"):
        weight_decay_param_groups(m, 0.05, layer_decay=0.7, lr=1e-3)
    with warnings.catch_warnings():  # a block list (Stack: 3 blocks + stem + head) is not degenerate
        warnings.simplefilter("error")
        Stack(layer_decay=0.5).configure_optimizers()


def test_groups_added_later_with_layer_decay_keep_the_layer_ratios():
    """BackboneFinetuning derives the backbone's lr from param_groups[0], the lowest layer's rate: each added
    layer gets that lr times its layer's scale relative to group 0's, i.e. its own layer-decayed rate
    times BackboneFinetuning's ratio."""
    from lightning.pytorch.callbacks import BaseFinetuning

    model = Stack(lr=1.0, layer_decay=0.5)
    model.blocks.requires_grad_(False)
    opt = model.configure_optimizers()["optimizer"]
    # stem: layer 0, blocks: 1-3, head: 4 (L = 5, ids over every parameter, frozen ones included)
    assert [g["layer_id"] for g in opt.param_groups] == [0, 0, 4, 4]
    assert opt.param_groups[0]["lr"] == 0.5**4
    n = len(opt.param_groups)
    with pytest.warns(UserWarning, match=r"param_groups\[0\]"):
        BaseFinetuning.unfreeze_and_add_param_group(model.blocks, opt, lr=0.1 * 0.5**4)  # stem rate / 10
    added = opt.param_groups[n:]
    assert [g["name"] for g in added] == [
        f"blocks_layer_{i}_{kind}" for i in (1, 2, 3) for kind in ("decay", "no_decay")
    ]
    for g, i in zip(added, (1, 1, 2, 2, 3, 3)):
        assert g["lr"] == pytest.approx(0.1 * 0.5 ** (4 - i))  # its layer's rate / 10
    opt.param_groups[-1]["lr"] *= 0.5  # what BackboneFinetuning does each epoch
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for g, i in zip(added, (1, 1, 2, 2, 3, 3)):
        assert g["lr"] == pytest.approx(0.05 * 0.5 ** (4 - i))
