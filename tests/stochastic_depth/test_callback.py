"""StochasticDepthScheduler: discovery, rules, schedules, logging, restore, resume, real models."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from lightning_reg import StochasticDepthScheduler
from lightning_reg.stochastic_depth.layers import DropPath
from tests.distributed.launch import run_ddp_script
from tests.helpers import LitClassifier, RateRecorder, ResMLP, classification_loader, fast_trainer
from tests.memory_logger import MemoryLogger


class Reseed(L.Callback):
    """Re-seed before every batch so an interrupted and an uninterrupted run draw the same masks.

    (Seeding per epoch is not enough: Lightning creates the dataloader iterator, which draws a base seed
    from the global RNG, at a different point of the first epoch after a resume.)
    """

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
    ) -> None:
        torch.manual_seed(1000 + trainer.global_step)


def _trainer(**kwargs: Any) -> L.Trainer:
    return fast_trainer(**{"max_epochs": 1, "accelerator": "cpu", "devices": 1, **kwargs})


# ====================================================================== tests


def _fit(
    model: nn.Module,
    cb: StochasticDepthScheduler,
    *,
    include_dropout: bool = False,
    data: DataLoader | None = None,
    **trainer_kwargs: Any,
) -> tuple[RateRecorder, L.Trainer]:
    rec = RateRecorder(include_dropout=include_dropout)
    trainer = _trainer(callbacks=[cb, rec], **trainer_kwargs)
    log_loss = trainer_kwargs.get("logger") is not None
    data = data if data is not None else classification_loader()
    trainer.fit(LitClassifier(model, log_loss=log_loss), data)
    return rec, trainer


def test_depth_rule_and_warmup_per_step_logged_and_restored() -> None:
    torch.manual_seed(0)
    model = ResMLP([0.05] * 4)
    cb = StochasticDepthScheduler(
        max_rate=0.3, rule="linear", schedule="warmup", cutoff=4, log_every_n_steps=2
    )
    logger = MemoryLogger()
    rec, trainer = _fit(model, cb, logger=logger, log_every_n_steps=2)  # 32 samples / 4 = 8 steps
    assert [s for s, _ in rec.rows] == list(range(8))
    for step, rates in rec.rows:
        mult = min(1.0, step / 4)  # warm-up over 4 steps
        assert rates == pytest.approx([0.0, 0.1 * mult, 0.2 * mult, 0.3 * mult], abs=1e-7)
    logged = [
        (s, m["stochastic_depth/max_rate"]) for s, m in logger.calls if "stochastic_depth/max_rate" in m
    ]
    # Lightning's rule, (step + 1) % 2 == 0: the rows where Lightning writes its own step metrics
    lightning_steps = [s for s, m in logger.calls if "train_loss" in m]
    assert lightning_steps == [1, 3, 5, 7]
    assert [s for s, _ in logged] == lightning_steps
    assert [v for _, v in logged] == pytest.approx([0.075, 0.225, 0.3, 0.3], abs=1e-7)
    assert float(trainer.callback_metrics["stochastic_depth/max_rate"]) == pytest.approx(0.3)  # monitorable
    assert [b.drop_path.p for b in model.blocks] == [0.05] * 4  # original rates restored at fit end


def test_model_rates_as_targets_early_schedule_in_epochs_with_accumulation() -> None:
    model = ResMLP([0.1, 0.2, 0.3, 0.4])
    cb = StochasticDepthScheduler(schedule="early", cutoff=2, cutoff_unit="epoch", early_mode="linear")
    # 4 batches per epoch, accumulate 2 -> 2 optimizer steps per epoch; cutoff 2 epochs = 4 steps; 3 epochs.
    rec, trainer = _fit(model, cb, data=classification_loader(16, 4), max_epochs=3, accumulate_grad_batches=2)
    assert trainer.global_step == 6
    assert [s for s, _ in rec.rows] == [b // 2 for b in range(12)]
    for step, rates in rec.rows:
        mult = max(0.0, 1 - step / 4)
        assert rates == pytest.approx([0.1 * mult, 0.2 * mult, 0.3 * mult, 0.4 * mult])
    assert [b.drop_path.p for b in model.blocks] == [0.1, 0.2, 0.3, 0.4]


def test_late_schedule_with_fraction_cutoff_and_huang_rule() -> None:
    model = ResMLP([0.0] * 3)
    cb = StochasticDepthScheduler(
        max_rate=0.3, rule="huang", schedule="late", cutoff=0.5, cutoff_unit="fraction"
    )
    rec, _ = _fit(model, cb)  # 8 steps -> cutoff at step 4
    for step, rates in rec.rows:
        on = 1.0 if step >= 4 else 0.0
        assert rates == pytest.approx([0.1 * on, 0.2 * on, 0.3 * on])


def test_scale_model_rates_keeps_the_model_profile_up_to_max_rate() -> None:
    model = ResMLP([0.05, 0.1, 0.2])  # the model's own profile: 1 : 2 : 4
    cb = StochasticDepthScheduler(max_rate=0.4, scale_model_rates=True)
    assert cb.scale_model_rates and cb.depth.scale_model_rates
    rec, _ = _fit(model, cb)
    assert all(rates == pytest.approx([0.1, 0.2, 0.4]) for _, rates in rec.rows)
    assert [b.drop_path.p for b in model.blocks] == [0.05, 0.1, 0.2]  # the model's rates back after the fit
    # a model whose rates are all 0 has no profile to keep: the depth rule sets the targets
    huang = StochasticDepthScheduler(max_rate=0.3, rule="huang", scale_model_rates=True)
    rec, _ = _fit(ResMLP([0.0] * 3), huang)
    assert rec.rows[0][1] == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"`scale_model_rates=True` scales the model's own rates to"):
        StochasticDepthScheduler(scale_model_rates=True)


def test_callable_rule_and_schedule() -> None:
    def half_then_full(step: int, total: int) -> float:
        return 0.5 if step < total // 2 else 1.0

    model = ResMLP([0.0] * 2)
    cb = StochasticDepthScheduler(max_rate=0.2, rule=lambda n, p: [p] * n, schedule=half_then_full)
    rec, _ = _fit(model, cb)
    assert [r for _, r in rec.rows] == [[0.1, 0.1]] * 4 + [[0.2, 0.2]] * 4


@pytest.mark.parametrize("dropout_rate", [None, 0.2])
def test_include_dropout_early_constant(dropout_rate: float | None) -> None:
    model = ResMLP([0.1, 0.2], dropout=0.5)
    cb = StochasticDepthScheduler(
        schedule="early", cutoff=3, early_mode="constant", include_dropout=True, dropout_rate=dropout_rate
    )
    logger = MemoryLogger()
    rec, _ = _fit(model, cb, include_dropout=True, logger=logger, log_every_n_steps=1)
    target = 0.5 if dropout_rate is None else dropout_rate
    for step, rates in rec.rows:
        on = 1.0 if step < 3 else 0.0
        assert rates == pytest.approx([0.1 * on, 0.2 * on, target * on])
    assert logger.calls[0][1] == pytest.approx(
        {"stochastic_depth/max_rate": 0.2, "stochastic_depth/dropout_max_rate": target}
    )
    assert model.dropout.p == 0.5


def test_no_drop_path_module_is_a_clear_error() -> None:
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=2, drop_path_rate=0.0
    )
    with pytest.raises(ValueError, match="found no drop-path module in LitClassifier") as err:
        _trainer(callbacks=[StochasticDepthScheduler(max_rate=0.1)]).fit(
            LitClassifier(vit), classification_loader(8, 4, (3, 16, 16))
        )
    msg = str(err.value)
    assert (
        "add_stochastic_depth(model, max_rate)" in msg and "nn.Identity" in msg and "drop_path_rate=0" in msg
    )


def test_cutoff_beyond_training_length_warns() -> None:
    cb = StochasticDepthScheduler(schedule="warmup", cutoff=100)
    with pytest.warns(
        UserWarning, match=r"cutoff \(100 steps\) is beyond the training length \(8 optimizer steps\)"
    ):
        _fit(ResMLP([0.1]), cb)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_rate": 1.0}, ValueError, r"`max_rate` must be a number in \[0, 1\) or None; got 1.0"),
        ({"max_rate": -0.5}, ValueError, r"`max_rate` must be a number in \[0, 1\) or None; got -0.5"),
        ({"max_rate": "0.1"}, TypeError, r"`max_rate` must be a number .*; got '0.1' of type str"),
        (
            {"dropout_rate": 1.2, "include_dropout": True},
            ValueError,
            r"`dropout_rate` must be a number in \[0, 1\) or None; got 1.2",
        ),
        (
            {"rule": "cosine"},
            ValueError,
            r"`rule` must be one of 'linear', 'huang', 'uniform' or a callable; got 'cosine'",
        ),
        (
            {"schedule": "cyclic"},
            ValueError,
            r"`schedule` must be one of 'constant', 'warmup', 'early', 'late' or a callable; got 'cyclic'",
        ),
        ({"schedule": "warmup"}, TypeError, "`cutoff` must be a number for schedule 'warmup'.*got None"),
        ({"schedule": "late", "cutoff": 2.5}, ValueError, "`cutoff` in steps must be a whole number"),
        (
            {"schedule": "early", "cutoff": 1.5, "cutoff_unit": "fraction"},
            ValueError,
            r"`cutoff` with cutoff_unit='fraction' must be a number in \[0, 1\]; got 1.5",
        ),
        (
            {"schedule": "warmup", "cutoff": 2, "cutoff_unit": "batch"},
            ValueError,
            r"`cutoff_unit` must be one of 'step', 'epoch', 'fraction'; got 'batch'",
        ),
        ({"early_mode": "cosine"}, ValueError, "`early_mode` must be one of 'linear', 'constant'; got 'cos"),
        ({"schedule": "early", "cutoff": 0}, ValueError, "`cutoff` must be > 0 for schedule 'early'"),
        ({"rule": 3}, TypeError, "`rule` must be one of .* or a callable; got 3"),
        ({"schedule": "no_such_pkg.fn"}, ValueError, "Cannot import time schedule 'no_such_pkg.fn'"),
        ({"include_dropout": 1}, TypeError, "`include_dropout` must be a bool"),
        ({"log_every_n_steps": -1}, ValueError, "`log_every_n_steps` must be an int >= 0 or None; got -1"),
        ({"verbose": 3}, ValueError, r"`verbose` must be an int in \[0, 2\]; got 3"),
        # arguments the chosen schedule would silently ignore
        (
            {"max_rate": 0.1, "cutoff": 3},
            ValueError,
            "`cutoff` is used only by the schedules 'warmup', 'early' and 'late'; got cutoff=3 with schedule"
            " 'constant'",
        ),
        (
            {"schedule": lambda t, n: 1.0, "cutoff": 0.5},
            ValueError,
            "`cutoff` is used only by .* with schedule '<lambda>'",
        ),
        ({"cutoff_unit": "epoch"}, ValueError, "`cutoff_unit` is used only with a `cutoff`"),
        (
            {"schedule": "warmup", "cutoff": 3, "early_mode": "constant"},
            ValueError,
            "`early_mode` is used only by the 'early' schedule; got early_mode='constant' with schedule",
        ),
        (
            {"dropout_rate": 0.1},
            ValueError,
            "`dropout_rate` applies only with include_dropout=True",
        ),
    ],
)
def test_bad_constructor_input(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        StochasticDepthScheduler(**kwargs)


def test_configurable_from_lightning_cli_style_arguments() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(StochasticDepthScheduler, "sd")
    cfg = parser.parse_args(
        [
            "--sd.max_rate=0.1",
            "--sd.rule=lightning_reg.stochastic_depth.rate_rules.huang_depth_rates",
            "--sd.schedule=early",
            "--sd.cutoff=0.25",
            "--sd.cutoff_unit=fraction",
            "--sd.include_dropout=true",
        ]
    )
    cb = StochasticDepthScheduler(**cfg.sd)
    from lightning_reg.stochastic_depth.rate_rules import huang_depth_rates

    assert cb.rule is huang_depth_rates
    assert (cb.max_rate, cb.schedule, cb.cutoff, cb.cutoff_unit, cb.include_dropout) == (
        0.1,
        "early",
        0.25,
        "fraction",
        True,
    )


class _CountingDrop(nn.Module):
    """Protocol module counting writes to its rate."""

    drop_rate_attribute = "rate"

    def __init__(self) -> None:
        super().__init__()
        self._rate = 0.2
        self.writes = 0

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self.writes += 1
        self._rate = value


def _fake_trainer(total: int) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=0,
        estimated_stepping_batches=total,
        log_every_n_steps=50,
        loggers=[],
        num_training_batches=total,
        accumulate_grad_batches=1,
    )


class _CountOps:
    """Count aten ops (TorchDispatchMode) run inside the block."""

    def __enter__(self) -> list[str]:
        from torch.utils._python_dispatch import TorchDispatchMode

        ops: list[str] = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                ops.append(str(func))
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        return ops

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def test_per_step_hook_skips_unchanged_multiplier_and_never_syncs() -> None:
    # 5 protocol modules (float attribute writes, counted) and 5 DropPath modules (rates in a tensor)
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(2, 2), _CountingDrop()) for _ in range(5)],
        *[nn.Sequential(nn.Linear(2, 2), DropPath(0.2)) for _ in range(5)],
    )
    counters = [m[1] for m in model[:5]]
    drop_paths = [m[1] for m in model[5:]]
    # (schedule, cutoff, attribute writes incl. the one at train start, tensor updates in steps 0..19)
    cases = [("constant", None, 1, 0), ("late", 10, 2, 1), ("warmup", 10, 11, 10)]
    for schedule, cutoff, writes, muls in cases:
        for c in counters:
            c.writes = 0
        cb = StochasticDepthScheduler(schedule=schedule, cutoff=cutoff)
        trainer = _fake_trainer(total=20)
        cb.on_fit_start(trainer, model)  # type: ignore[arg-type]
        cb.on_train_start(trainer, model)  # type: ignore[arg-type]
        with _CountOps() as ops:
            for step in range(20):
                trainer.global_step = step
                for batch_idx in range(2):  # second call in the same step is a no-op
                    cb.on_train_batch_start(trainer, model, None, batch_idx)  # type: ignore[arg-type]
                    if schedule != "constant":  # the tensor the DropPath modules read holds the rate
                        rate = 0.2 * cb._schedule_fn(step, 20)  # type: ignore[misc]
                        assert [d.p for d in drop_paths] == [rate] * 5
        # one in-place multiply per change of the multiplier, for all modules at once; nothing else (no sync)
        assert ops == ["aten.mul.out"] * muls, schedule
        assert [c.writes for c in counters] == [writes] * 5, schedule
        if schedule != "constant":
            assert cb._table is not None and cb._table.rates.tolist()[5:] == [0.2] * 5
        cb.on_fit_end(trainer, model)  # type: ignore[arg-type]
        assert [c.rate for c in counters] == [0.2] * 5
        assert [d.p for d in drop_paths] == [0.2] * 5 and all(d._rate is None for d in drop_paths)


def test_loaded_state_is_adopted_and_a_mismatch_warns() -> None:
    model = ResMLP([0.1, 0.2])
    names = ["blocks.0.drop_path", "blocks.1.drop_path"]
    cb = StochasticDepthScheduler()
    cb.load_state_dict(
        {"step": 5, "names": names, "original_rates": [0.3, 0.4], "target_rates": [0.05, 0.15]}
    )
    trainer = _fake_trainer(total=10)
    cb.on_fit_start(trainer, model)  # type: ignore[arg-type]
    cb.on_train_start(trainer, model)  # type: ignore[arg-type]
    assert [b.drop_path.p for b in model.blocks] == [0.05, 0.15]  # checkpoint's targets
    cb.on_fit_end(trainer, model)  # type: ignore[arg-type]
    assert [b.drop_path.p for b in model.blocks] == [0.1, 0.2]  # the rates this model had before fit
    cb2 = StochasticDepthScheduler()
    cb2.load_state_dict({"step": 5, "names": names[:1], "original_rates": [0.3], "target_rates": [0.05]})
    cb2.on_fit_start(trainer, model)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match=r"do not match this model's \(1 vs 2\)"):
        cb2.on_train_start(trainer, model)  # type: ignore[arg-type]
    assert [b.drop_path.p for b in model.blocks] == [0.1, 0.2]  # constant schedule, own rates


def test_rates_restored_when_training_raises() -> None:
    class Boom(L.Callback):
        def on_train_batch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
        ) -> None:
            if trainer.global_step == 2:
                raise RuntimeError("boom")

    model = ResMLP([0.1, 0.2])
    cb = StochasticDepthScheduler(max_rate=0.5, rule="uniform")
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(callbacks=[cb, Boom()]).fit(LitClassifier(model), classification_loader())
    assert [b.drop_path.p for b in model.blocks] == [0.1, 0.2]


def test_torchvision_convnext_tiny_stochastic_depth_modules() -> None:
    from torchvision.ops import StochasticDepth

    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(num_classes=3, stochastic_depth_prob=0.1)
    # torchvision's own rule: block i of 18 gets 0.1 * i / 17
    original = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert original == pytest.approx([0.1 * i / 17 for i in range(18)])
    cb = StochasticDepthScheduler(max_rate=0.2, rule="huang", schedule="warmup", cutoff=2)
    rec, _ = _fit(model, cb, data=classification_loader(6, 2, (3, 32, 32), classes=3), log_every_n_steps=1)
    assert [s for s, _ in rec.rows] == [0, 1, 2]
    for step, rates in rec.rows:
        mult = min(1.0, step / 2)
        assert rates == pytest.approx([0.2 * (i + 1) / 18 * mult for i in range(18)])
    assert [m.p for m in model.modules() if isinstance(m, StochasticDepth)] == original


def test_timm_vit_drop_path_modules_share_a_rate_per_block() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=4, num_heads=2, num_classes=2, drop_path_rate=0.3
    )
    # timm: linspace(0, 0.3, 4) per block; block 0 (rate 0) gets nn.Identity, blocks 1-3 DropPath x2 each
    timm_rates = [0.0, 0.1, 0.2, 0.3]
    cb = StochasticDepthScheduler(schedule="early", cutoff=4)
    rec, _ = _fit(vit, cb, data=classification_loader(12, 2, (3, 16, 16)))
    for step, rates in rec.rows:
        mult = max(0.0, 1 - step / 4)
        assert rates == pytest.approx([r * mult for r in timm_rates[1:] for _ in (1, 2)])
    # with an explicit max_rate the 3 found levels are re-ruled (timm's Identity block is invisible)
    cb2 = StochasticDepthScheduler(max_rate=0.4, rule="uniform")
    rec2, _ = _fit(vit, cb2, data=classification_loader(4, 2, (3, 16, 16)))
    assert rec2.rows[0][1] == [0.4] * 6
    assert [m.drop_prob for m in vit.modules() if isinstance(m, timm.layers.DropPath)] == pytest.approx(
        [r for r in timm_rates[1:] for _ in (1, 2)]
    )


def test_resume_mid_schedule_continues_exactly(tmp_path: Path) -> None:
    def run(
        max_epochs: int, stop_after: int | None = None, ckpt: str | None = None
    ) -> tuple[RateRecorder, L.Trainer]:
        L.seed_everything(0)
        model = ResMLP([0.0] * 3)
        cb = StochasticDepthScheduler(max_rate=0.5, rule="linear", schedule="early", cutoff=10)
        rec = RateRecorder()
        extra: list[L.Callback] = [Reseed()]
        if stop_after is not None:
            extra.append(_StopAfter(stop_after))
        trainer = _trainer(callbacks=[cb, rec, *extra], max_epochs=max_epochs, deterministic=True)
        lit = LitClassifier(model)
        trainer.fit(lit, classification_loader(16, 4), ckpt_path=ckpt)
        return rec, trainer

    full, full_trainer = run(4)  # 4 epochs x 4 steps = 16 steps; cutoff 10
    first, first_trainer = run(4, stop_after=2)
    assert first_trainer.global_step == 8
    ckpt = str(tmp_path / "mid.ckpt")
    first_trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    (key,) = [k for k in state if k.startswith("StochasticDepthScheduler")]
    assert state[key]["target_rates"] == pytest.approx([0.0, 0.25, 0.5])
    resumed, resumed_trainer = run(4, ckpt=ckpt)
    assert resumed_trainer.global_step == 16
    assert first.rows + resumed.rows == full.rows
    for step, rates in full.rows:
        assert rates == pytest.approx([r * max(0.0, 1 - step / 10) for r in (0.0, 0.25, 0.5)])
    full_params = dict(full_trainer.lightning_module.named_parameters())
    for name, param in resumed_trainer.lightning_module.named_parameters():
        assert torch.equal(param, full_params[name]), name


class _StopAfter(L.Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.slow
def test_ddp_two_cpu_processes_without_find_unused_parameters(tmp_path: Path) -> None:
    script = Path(__file__).parents[1] / "distributed" / "ddp_stochastic_depth.py"
    run_ddp_script(script, tmp_path, timeout=240)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["find_unused_parameters"] is False and r1["find_unused_parameters"] is False
    assert r0["world_size"] == 2
    # identical schedule on both ranks, equal to the formula: huang over 3 blocks, max 0.3, warm-up 3 steps
    assert r0["rates"] == r1["rates"]
    assert [s for s, _ in r0["rates"]] == list(range(8))
    for step, rates in r0["rates"]:
        mult = min(1.0, step / 3)
        assert rates == pytest.approx([0.1 * mult, 0.2 * mult, 0.3 * mult])
    # gradients were all-reduced every step: identical weights, which did change
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), name
    assert any(not torch.equal(r0["weights"][n], r0["init"][n]) for n in r0["weights"])
    assert r0["final_rates"] == r1["final_rates"] == [0.05, 0.05, 0.05]


def test_dropout_alone_is_scheduled_when_include_dropout() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.4), nn.Linear(8, 2))
    cb = StochasticDepthScheduler(schedule="early", cutoff=4, include_dropout=True, dropout_rate=0.2)
    logger = MemoryLogger()
    rec, trainer = _fit(model, cb, include_dropout=True, logger=logger, log_every_n_steps=1)
    for step, rates in rec.rows:  # early, linear over 4 steps, from 0.2
        assert rates == pytest.approx([0.2 * max(0.0, 1 - step / 4)])
    assert [s for s, _ in logger.series("stochastic_depth/dropout_max_rate")] == list(range(8))
    assert logger.series("stochastic_depth/max_rate") == []  # no drop-path module, no drop-path key
    assert model[2].p == 0.4 and type(model[2]) is nn.Dropout
    # still refused: without include_dropout, or with a max_rate that has nothing to apply to
    for kwargs, match in [
        ({}, "found no drop-path module in LitClassifier"),
        ({"include_dropout": True, "max_rate": 0.1}, r"max_rate=0.1\) found no drop-path module"),
    ]:
        with pytest.raises(ValueError, match=match):
            _fit(model, StochasticDepthScheduler(**kwargs))


def test_two_schedulers_on_one_trainer_are_refused() -> None:
    first = StochasticDepthScheduler(max_rate=0.1)
    second = StochasticDepthScheduler(include_dropout=True)
    with pytest.raises(ValueError, match="The Trainer has 2 StochasticDepthScheduler callbacks; use one"):
        _trainer(callbacks=[first, second]).fit(LitClassifier(ResMLP([0.1])), classification_loader())


def test_verbose_one_line_at_fit_start_details_at_two(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    model = torchvision.models.resnet101(num_classes=2)
    from lightning_reg import add_stochastic_depth

    add_stochastic_depth(model, 0.2)  # 33 blocks
    lines = {}
    for verbose in (0, 1, 2):
        caplog.clear()
        cb = StochasticDepthScheduler(schedule="warmup", cutoff=5, verbose=verbose)
        trainer = _fake_trainer(total=10)
        with caplog.at_level(logging.INFO):
            cb.on_fit_start(trainer, model)  # type: ignore[arg-type]
            cb.on_train_start(trainer, model)  # type: ignore[arg-type]
        cb.on_fit_end(trainer, model)  # type: ignore[arg-type]
        lines[verbose] = [ln for r in caplog.records for ln in r.getMessage().splitlines()]
    assert lines[0] == []
    assert lines[1] == [
        "StochasticDepthScheduler: 33 drop-path modules (DropPath) in 33 depth levels, max target 0.2;"
        " schedule warmup (cutoff 5 step); rates in a float64 tensor on cpu."
    ]
    assert len(lines[2]) == 1 + 33 and lines[2][1].startswith("  level 0 (layer1.0.bn3.drop_path): target 0")
