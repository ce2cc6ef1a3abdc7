"""Compatibility matrix: every callback of the library and the ``RegularizedModule`` mixin together with
Lightning's own callbacks, the Tuner, precisions, accumulation, manual optimization, ``torch.compile`` and
``ddp_spawn``. Each fit holds all of our callbacks at once (``ours()``) so that one fit covers a row of the
matrix; ``docs/interop.md`` states what works and what is refused.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import (
    BackboneFinetuning,
    GradientAccumulationScheduler,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    StochasticWeightAveraging,
    Timer,
)
from packaging.version import Version

from lightning_reg import (
    EarlyStopping,
    FreezeBatchNorm,
    GradientMonitor,
    OverfittingMonitor,
    ProximalL1,
    StochasticDepthScheduler,
)
from tests.distributed.launch import DestroyProcessGroup
from tests.interop._matrix import Backboned, Manual, PlainLogNet, TunableNet, ours, plateau
from tests.memory_logger import MemoryLogger
from tests.reliability._setup import fast_trainer


def _get(cbs: list[Any], cls: type) -> Any:
    return next(cb for cb in cbs if isinstance(cb, cls))


def _keys(logger: MemoryLogger) -> set[str]:
    return {k for _, row in logger.calls for k in row}


def trainer_steps(model: L.LightningModule) -> int:
    return model.trainer.global_step


def _finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_with_lightning_callbacks_checkpoint_lr_monitor_rich_timer_accumulation_scheduler(tmp_path):
    torch.manual_seed(0)
    model = TunableNet()
    cbs = ours()
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, filename="best")
    timer = Timer()
    logger = MemoryLogger()
    trainer = fast_trainer(
        max_epochs=5,
        enable_checkpointing=True,
        enable_progress_bar=True,
        logger=logger,
        default_root_dir=tmp_path,
        callbacks=[
            *cbs, ckpt, LearningRateMonitor(), RichProgressBar(), timer,
            GradientAccumulationScheduler({0: 1, 2: 2}),
        ],
    )
    trainer.fit(model)
    es = _get(cbs, EarlyStopping)
    # 8 batches per epoch: 8 optimizer steps in epochs 0-1, 4 in epochs 2-4
    assert trainer.global_step == 2 * 8 + 3 * 4
    # ModelCheckpoint and EarlyStopping agree on the best epoch; the restored weights are the checkpoint's
    assert float(ckpt.best_model_score) == pytest.approx(float(es.best_score))
    best = torch.load(ckpt.best_model_path, weights_only=False)
    assert best["epoch"] == es.best_epoch
    for name, value in best["state_dict"].items():
        if not name.startswith("train_loss_mean"):  # a metric's running state, reset every epoch
            assert torch.equal(value, model.state_dict()[name]), name
    # the frozen BatchNorm and DropPath: validating the restored model reproduces the best score
    again = trainer.validate(model, verbose=False)[0]["val_loss"]
    assert again == pytest.approx(float(es.best_score), rel=1e-6)
    keys = _keys(logger)
    assert {"lr-SGD/decay", "lr-SGD/no_decay", "grad/norm_total", "proximal_l1/zero_fraction"} <= keys
    assert "penalty/value" in keys and "stochastic_depth/max_rate" in keys
    assert timer.time_elapsed("train") > 0
    assert _get(cbs, FreezeBatchNorm).frozen and _finite_weights(model)


class _Record(L.Callback):
    """Parameters at the end of every training epoch, and the frozen BatchNorm's statistics."""

    def __init__(self) -> None:
        self.params: list[list[torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.params.append([p.detach().clone() for p in pl_module.parameters()])
        if trainer.current_epoch == 1:
            bn = pl_module.stem[1]
            self.frozen_stats = (bn.running_mean.clone(), bn.running_var.clone())


def test_with_stochastic_weight_averaging(tmp_path):
    """Our callbacks (EarlyStopping aside: both replace the weights at the end) with SWA from epoch 2: the
    final weights are SWA's average, and the BatchNorm frozen at epoch 1 keeps its statistics through SWA's
    BatchNorm update (which reset them to zeros and ones before FreezeBatchNorm restored them)."""
    torch.manual_seed(0)
    model = TunableNet()
    cbs = [cb for cb in ours() if not isinstance(cb, EarlyStopping)]
    record = _Record()
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)
    trainer = fast_trainer(max_epochs=4, default_root_dir=tmp_path, callbacks=[*cbs, record, swa])
    trainer.fit(model)
    assert int(swa.n_averaged) >= 2
    for p, avg in zip(model.parameters(), swa._average_model.parameters()):
        assert torch.equal(p.detach(), avg.detach())  # SWA's average, not undone by any of our callbacks
    assert any(not torch.equal(p.detach(), last) for p, last in zip(model.parameters(), record.params[3]))
    bn = model.stem[1]
    assert torch.equal(bn.running_mean, record.frozen_stats[0])
    assert torch.equal(bn.running_var, record.frozen_stats[1])


def test_tuner_lr_finder_and_batch_size_finder(tmp_path):
    from lightning.pytorch.tuner import Tuner

    torch.manual_seed(0)
    model = TunableNet(mixer=False)
    cbs = ours()
    trainer = fast_trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=cbs)
    tuner = Tuner(trainer)
    finder = tuner.lr_find(model, min_lr=1e-4, max_lr=1.0, num_training=30, early_stop_threshold=None)
    suggestion = finder.suggestion()
    assert suggestion is not None and model.lr == suggestion  # applied to the module's groups
    tuner.scale_batch_size(model, mode="power", steps_per_trial=1, max_trials=3, init_val=4)
    # 4 -> 8 -> 16: max_trials reached (Lightning < 2.6 also doubled after the last trial: 32)
    assert model.batch_size == (16 if Version(L.__version__) >= Version("2.6") else 32)
    model.batch_size = 16  # the fit below: 4 optimizer steps per epoch, longer than the LR warm-up
    trainer.fit(model)
    opt = trainer.optimizers[0]
    assert {g["name"] for g in opt.param_groups} == {"decay", "no_decay"}
    es = _get(cbs, EarlyStopping)
    assert es.best_epoch in (0, 1)  # from the real fit, not from a tuning trial
    assert trainer.global_step == 2 * math.ceil(64 / 16)
    assert _finite_weights(model)


def test_bf16_mixed_accumulation_val_check_interval_and_reduce_lr_on_plateau(tmp_path):
    torch.manual_seed(0)
    model = TunableNet()
    model.configure_regularization(
        optimizer=model.regularization_config.optimizer, lr=0.3, weight_decay=1e-3,
        lr_scheduler=plateau(factor=0.5),
    )
    cbs = ours()
    logger = MemoryLogger()
    trainer = fast_trainer(
        max_epochs=3, precision="bf16-mixed", accumulate_grad_batches=2, val_check_interval=0.5,
        default_root_dir=tmp_path, callbacks=cbs, logger=logger,
    )
    trainer.fit(model)
    assert trainer.global_step == 3 * 4
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "epoch" and config.monitor == "val_loss"
    norms = [float(row["grad/norm_total"]) for _, row in logger.calls if "grad/norm_total" in row]
    assert len(norms) == 12 and all(math.isfinite(v) and v > 0 for v in norms)  # once per optimizer step
    val_rows = [row for _, row in logger.calls if "val_loss" in row]
    assert len(val_rows) == 6  # twice per epoch
    assert _get(cbs, EarlyStopping).best_epoch is not None and _finite_weights(model)


def test_manual_optimization(tmp_path):
    torch.manual_seed(0)
    model = Manual()
    cbs = [ProximalL1(l1=0.5) if isinstance(cb, ProximalL1) else cb for cb in ours()]
    logger = MemoryLogger()
    trainer = fast_trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=cbs, logger=logger)
    trainer.fit(model)
    assert trainer.global_step == 2 * 8
    assert float(_get(cbs, ProximalL1).zero_fraction()) > 0  # thresholded after the real steps
    keys = _keys(logger)
    assert {"penalty/value", "grad/norm_total", "grad/clip/threshold"} <= keys  # hooks fire in opt.step()
    assert _get(cbs, EarlyStopping).best_epoch is not None and _finite_weights(model)


def _compiled_fit(tmp_path: Any, cbs: list[Any]) -> tuple[L.Trainer, Any, int, int]:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = PlainLogNet()
    trainer = fast_trainer(max_epochs=3, default_root_dir=tmp_path, callbacks=cbs)
    trainer.fit(torch.compile(model, backend="eager"))
    hit_limit = sum(v for k, v in counters["unimplemented"].items() if "recompile limit" in k)
    return trainer, model, hit_limit, counters["stats"]["unique_graphs"]


def _constant_drop_path_rate(cbs: list[Any]) -> list[Any]:
    constant = StochasticDepthScheduler(max_rate=0.3)
    return [constant if isinstance(cb, StochasticDepthScheduler) else cb for cb in cbs]


def test_torch_compile(tmp_path):
    """Every callback and the mixin on a compiled model; the drop-path rate held constant."""
    cbs = _constant_drop_path_rate(ours())
    trainer, model, hit_limit, _ = _compiled_fit(tmp_path, cbs)
    assert hit_limit == 0
    assert trainer.global_step == 3 * 8
    assert _get(cbs, EarlyStopping).best_epoch is not None and _finite_weights(model)


def test_torch_compile_with_a_scheduled_drop_path_rate(tmp_path):
    """A rate that changes every step must compile no more graphs than a constant one."""
    *_, constant_graphs = _compiled_fit(tmp_path, _constant_drop_path_rate(ours()))
    *_, scheduled_graphs = _compiled_fit(tmp_path, ours())
    assert scheduled_graphs == constant_graphs


def test_backbone_finetuning_with_our_callbacks(tmp_path):
    torch.manual_seed(0)
    model = Backboned()
    cbs = ours(group_by="param_groups")
    logger = MemoryLogger()
    trainer = fast_trainer(
        max_epochs=3, logger=logger, default_root_dir=tmp_path,
        callbacks=[*cbs, BackboneFinetuning(unfreeze_backbone_at_epoch=1)],
    )
    trainer.fit(model)
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert names == ["decay", "no_decay", "backbone_decay", "backbone_no_decay"]
    assert _finite_weights(model)


def test_gradient_monitor_sees_groups_added_during_training(tmp_path):
    model = Backboned()
    logger = MemoryLogger()
    trainer = fast_trainer(
        max_epochs=2, logger=logger, default_root_dir=tmp_path,
        callbacks=[GradientMonitor(group_by="param_groups"), BackboneFinetuning(unfreeze_backbone_at_epoch=1)]
    )
    trainer.fit(model)
    assert any(k.endswith("backbone_decay") for k in _keys(logger))


def test_without_validation_every_callback_runs_or_refuses_clearly(tmp_path):
    torch.manual_seed(0)
    model = TunableNet()
    plain = [cb for cb in ours() if not isinstance(cb, (EarlyStopping, OverfittingMonitor))]
    fast_trainer(max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path, callbacks=plain).fit(model)
    assert trainer_steps(model) == 2 * 8 and _finite_weights(model)
    with pytest.raises(RuntimeError, match=r"val_loss"):
        fast_trainer(
            max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path,
            callbacks=[EarlyStopping("val_loss")],
        ).fit(TunableNet())


def test_without_validation_overfitting_monitor_says_so(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fast_trainer(
                max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path,
                callbacks=[OverfittingMonitor({"loss": ("train_loss", "val_loss")})],
            ).fit(TunableNet())
        except Exception as err:  # refusing is fine, if it names the missing key
            assert "val_loss" in str(err)
        else:
            assert any("val_loss" in str(w.message) for w in caught)


@pytest.fixture(scope="module")
def ddp_spawn_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Any], list[torch.Tensor]]:
    torch.manual_seed(0)
    model = TunableNet()
    initial = [p.detach().clone() for p in model.parameters()]
    cbs = ours()
    trainer = fast_trainer(
        max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_spawn",
        default_root_dir=tmp_path_factory.mktemp("spawn"), callbacks=[*cbs, DestroyProcessGroup()],
    )
    trainer.fit(model)
    return model, cbs, initial


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_spawn_trains_and_returns_the_weights(ddp_spawn_fit):
    model, _, initial = ddp_spawn_fit
    assert _finite_weights(model)
    assert any(not torch.equal(p.detach(), q) for p, q in zip(model.parameters(), initial))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_spawn_early_stopping_state_reaches_the_main_process(ddp_spawn_fit):
    _, cbs, _ = ddp_spawn_fit
    es = _get(cbs, EarlyStopping)
    assert es.best_epoch is not None and math.isfinite(float(es.best_score))
