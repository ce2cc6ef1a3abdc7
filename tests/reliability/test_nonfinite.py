"""Non-finite values with every callback on: NaN loss, Inf gradient, NaN monitored metric.

Documented outcomes (README "Guarantees"), asserted against references recorded independently of the
callbacks (weights and validation losses captured at every validation, hand-computed expectations):

- without ``skip_nonfinite`` a NaN loss / Inf gradient poisons the weights, the next validation loss is
  NaN, ``EarlyStopping`` stops (``NON_FINITE_METRIC``) and restores the best weights from before the fault;
- with ``GradientClipping(skip_nonfinite=True)`` the step is skipped: no parameter and no optimizer state
  changes (penalty, proximal L1 and weight decay included), training goes on;
- ``GradientMonitor`` reports the non-finite element count of that step;
- NaN in the monitored metric: ``EarlyStopping`` stops and restores; ``OverfittingMonitor`` records NaN
  for that check, raises no alert and keeps its best value;
- NaN on every step: ``GradientClipping`` raises after ``max_consecutive_skips`` and ``EarlyStopping``
  still restores the best weights (``on_exception``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_reg import EarlyStopping, GradientClipping, OverfittingMonitor, StochasticDepthScheduler
from lightning_reg._shared.lightning_compat import EarlyStoppingReason
from tests.memory_logger import MemoryLogger
from tests.reliability._setup import Net, all_callbacks, fast_trainer, train_loader, val_loader

FAULT_STEP = 12  # epoch 1 (8 batches per epoch)


class Probe(Callback):
    """Record weights/optimizer state before every step and weights + val_loss after every validation."""

    def __init__(self) -> None:
        self.before_step: dict[int, dict[str, torch.Tensor]] = {}
        self.momentum: dict[int, list[torch.Tensor]] = {}
        self.rates: dict[int, list[float]] = {}
        self.nonfinite: dict[int, int] = {}
        self.validated: dict[int, tuple[float, dict[str, torch.Tensor]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before_step[trainer.global_step] = copy.deepcopy(pl_module.state_dict())
        state = trainer.optimizers[0].state
        self.momentum[trainer.global_step] = [
            state[p]["momentum_buffer"].clone()
            for p in pl_module.parameters()
            if "momentum_buffer" in state[p]
        ]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # runs before the library's callbacks (listed first): the raw gradients, counted in plain PyTorch
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.nonfinite[trainer.global_step] = sum(int((~torch.isfinite(g)).sum()) for g in grads)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rates[trainer.global_step] = [float(b.drop_path.p) for b in pl_module.blocks]

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = float(trainer.callback_metrics["val_loss"])
        self.validated[trainer.current_epoch] = (loss, copy.deepcopy(pl_module.state_dict()))


def _fit(fault: dict[str, Any], skip_nonfinite: bool, max_epochs: int = 5) -> dict[str, Any]:
    torch.manual_seed(0)
    callbacks = all_callbacks(skip_nonfinite=skip_nonfinite)
    probe, logger = Probe(), MemoryLogger()
    trainer = fast_trainer(callbacks=[probe, *callbacks], logger=logger, max_epochs=max_epochs)
    model = Net(fault=fault)
    error = None
    try:
        trainer.fit(model, train_loader(), val_loader())
    except Exception as err:  # noqa: BLE001 - the outcome under test
        error = err
    cbs = {type(cb).__name__: cb for cb in callbacks}
    return dict(trainer=trainer, model=model, probe=probe, logger=logger, cbs=cbs, error=error)


def _best_finite_epoch(probe: Probe) -> int:
    finite = {e: v for e, (v, _) in probe.validated.items() if math.isfinite(v)}
    return min(finite, key=finite.get)


def _assert_restored_best(run: dict[str, Any]) -> None:
    es: EarlyStopping = run["cbs"]["EarlyStopping"]
    best = _best_finite_epoch(run["probe"])
    assert es.best_epoch == best and es.restored
    expected = run["probe"].validated[best][1]
    for k, v in run["model"].state_dict().items():
        if not k.startswith("train_loss_mean."):  # parameters and buffers; not the logging metric's state
            assert torch.equal(v, expected[k]), k


def _params_and_momentum_unchanged(run: dict[str, Any], step: int) -> None:
    probe, model = run["probe"], run["model"]
    names = [n for n, _ in model.named_parameters()]
    for n in names:
        assert torch.equal(probe.before_step[step][n], probe.before_step[step + 1][n]), n
    for a, b in zip(probe.momentum[step], probe.momentum[step + 1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["nan_loss", "inf_grad"])
def test_fault_without_skip_stops_and_restores_weights_from_before_the_fault(kind: str) -> None:
    run = _fit({"kind": kind, "step": FAULT_STEP}, skip_nonfinite=False)
    es = run["cbs"]["EarlyStopping"]
    assert run["error"] is None
    # the poisoned weights are validated at the end of epoch 1: NaN, stop there
    assert math.isnan(run["probe"].validated[1][0])
    assert es.stopped_epoch == 1 and run["trainer"].global_step == 16
    assert es.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
    _assert_restored_best(run)
    assert es.best_epoch == 0 and es.best_step == 8
    assert all(torch.isfinite(v).all() for v in run["model"].state_dict().values() if v.is_floating_point())
    # GradientMonitor reports the non-finite count of the raw gradients (one injected Inf; NaN loss: many)
    probe = run["probe"]
    assert probe.nonfinite[FAULT_STEP] == 1 if kind == "inf_grad" else probe.nonfinite[FAULT_STEP] > 100
    assert run["logger"].at(FAULT_STEP, "grad/nonfinite_count") == [probe.nonfinite[FAULT_STEP]]
    assert run["logger"].at(FAULT_STEP - 1, "grad/nonfinite_count") == [0.0]
    total = run["logger"].at(FAULT_STEP, "grad/norm_total")[0]
    assert math.isinf(total) if kind == "inf_grad" else math.isnan(total)
    # OverfittingMonitor: NaN recorded, no alert, best value kept
    om: OverfittingMonitor = run["cbs"]["OverfittingMonitor"]
    last = om.history[-1]["pairs"]["loss"]
    assert math.isnan(last["val"]) and math.isnan(last["train"]) and not om.history[-1]["alert"]
    assert last["best_val"] == run["probe"].validated[0][0]


@pytest.mark.parametrize("kind", ["nan_loss", "inf_grad"])
def test_fault_with_skip_nonfinite_leaves_parameters_and_optimizer_untouched(kind: str) -> None:
    run = _fit({"kind": kind, "step": FAULT_STEP}, skip_nonfinite=True)
    assert run["error"] is None and run["trainer"].current_epoch == 5  # training went on to max_epochs
    clip: GradientClipping = run["cbs"]["GradientClipping"]
    assert clip.state_dict()["skipped_steps"] == 1
    _params_and_momentum_unchanged(run, FAULT_STEP)
    # the neighbouring steps do update the parameters
    assert not torch.equal(
        run["probe"].before_step[FAULT_STEP - 1]["head.weight"],
        run["probe"].before_step[FAULT_STEP]["head.weight"],
    )
    assert run["logger"].at(FAULT_STEP, "grad/clip/skipped_steps") == [1.0]
    assert run["logger"].at(FAULT_STEP + 1, "grad/nonfinite_count") == [0.0]
    # StochasticDepthScheduler is unaffected: warm-up reached the linear depth rule 0.3 * [0, 1/2, 1]
    assert run["probe"].rates[FAULT_STEP + 1] == pytest.approx([0.0, 0.15, 0.3], abs=1e-6)  # p is float32
    assert all(torch.isfinite(v).all() for v in run["model"].state_dict().values() if v.is_floating_point())
    assert run["cbs"]["FreezeBatchNorm"].frozen and not run["model"].stem[1].training
    _assert_restored_best(run)


def test_nan_monitored_metric_stops_and_restores() -> None:
    run = _fit({"kind": "nan_val", "epoch": 3}, skip_nonfinite=False)
    es = run["cbs"]["EarlyStopping"]
    assert run["error"] is None and es.stopped_epoch == 3 and run["trainer"].global_step == 32
    assert es.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
    assert math.isnan(run["probe"].validated[3][0])
    _assert_restored_best(run)
    assert es.best_epoch < 3
    om: OverfittingMonitor = run["cbs"]["OverfittingMonitor"]
    check = [h for h in om.history if h["epoch"] == 3][0]
    assert math.isnan(check["pairs"]["loss"]["val"]) and not check["alert"]
    finite_vals = [v for e, (v, _) in run["probe"].validated.items() if e < 3]
    assert check["pairs"]["loss"]["best_val"] == min(finite_vals)
    sd: StochasticDepthScheduler = run["cbs"]["StochasticDepthScheduler"]
    assert [float(b.drop_path.p) for b in run["model"].blocks] == [0.0, 0.0, 0.0]  # original rates restored
    assert sd.state_dict()  # still serialisable after the stop


def test_persistent_nan_raises_after_max_consecutive_skips_and_still_restores() -> None:
    steps = list(range(FAULT_STEP, 40))
    run = _fit({"kind": "nan_loss", "step": steps}, skip_nonfinite=True)
    assert isinstance(run["error"], RuntimeError)
    assert "consecutive" in str(run["error"])
    clip: GradientClipping = run["cbs"]["GradientClipping"]
    assert clip.max_consecutive_skips == 10
    # the 10th consecutive non-finite step raises (global_step counts the 9 skipped ones); no parameter
    # moved during the skipped steps
    assert run["trainer"].global_step == FAULT_STEP + 9
    probe = run["probe"]
    for n, _ in run["model"].named_parameters():
        assert torch.equal(probe.before_step[FAULT_STEP][n], probe.before_step[FAULT_STEP + 9][n]), n
    _assert_restored_best(run)
