"""Scheduled rates under torch.compile: one graph per compiled region, no graph breaks, eager-exact draws.

The graph counts come from dynamo's own counters (``torch._dynamo.utils.counters``) with the cheap
``aot_eager`` backend: it traces forward and backward exactly as inductor would, then runs the ATen ops
eagerly, so the random draws of the compiled model can be compared bitwise with the eager model's.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import pytest
import torch
import torch._dynamo
import torchvision
from torch import Tensor, nn
from torch._dynamo.utils import counters

from lightning_reg import StochasticDepthScheduler
from lightning_reg.stochastic_depth.layers import DropPath, find_drop_rate_modules
from lightning_reg.stochastic_depth.rate_rules import make_time_schedule
from lightning_reg.stochastic_depth.rate_tensor import ScheduledRates
from tests.helpers import classification_loader, fast_trainer
from tests.stochastic_depth._rng import same_bernoulli_stream

timm = pytest.importorskip("timm")


class Block(nn.Module):
    def __init__(self, drop: nn.Module, width: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(torch.relu(self.fc(x)))


def every_kind() -> nn.Sequential:
    """Our DropPath, torchvision's StochasticDepth, timm's DropPath, nn.Dropout and nn.Dropout1d."""
    torch.manual_seed(0)
    return nn.Sequential(
        Block(DropPath(0.1)),
        Block(torchvision.ops.StochasticDepth(0.2, "row")),
        Block(timm.layers.DropPath(0.3)),
        nn.Dropout(0.2),
        nn.Linear(8, 8),
        nn.Dropout1d(0.1),
    )


TARGETS = [0.1, 0.2, 0.3, 0.2, 0.1]


@contextmanager
def dynamo_counts() -> Iterator[Any]:
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def train(
    model: nn.Module,
    forward: Callable[[Tensor], Tensor],
    rates: Callable[[int], None],
    steps: int,
) -> tuple[list[Tensor], list[Tensor]]:
    """A few SGD steps with fixed inputs; return every output and the final weights."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(5)
    outs = []
    for step in range(steps):
        rates(step)
        y = forward(torch.randn(16, 4, 8, generator=g))
        outs.append(y.detach().clone())
        opt.zero_grad()
        y.square().mean().backward()
        opt.step()
    return outs, [p.detach().clone() for p in model.parameters()]


def scheduled_run(
    schedule: str, compiled: bool, steps: int = 10, cutoff: int = 5
) -> tuple[list[Tensor], list[Tensor]]:
    model = every_kind()
    table = ScheduledRates(find_drop_rate_modules(model, include_dropout=True), TARGETS, "cpu")
    fn = make_time_schedule(schedule, cutoff=cutoff)
    forward = torch.compile(model, backend="aot_eager") if compiled else model
    try:
        return train(model, forward, lambda s: table.apply(fn(s, steps), fn(s + 1, steps)), steps)
    finally:
        table.release()


@pytest.mark.parametrize(("schedule", "graphs"), [("warmup", 1), ("early", 2)])
def test_every_kind_compiles_once_per_phase_with_eager_exact_draws(schedule: str, graphs: int) -> None:
    # warm-up from 0 over 5 steps: rates change at every step -> one graph. early: on, then all rates 0
    # from step 5 -> a second (no-draw) graph, compiled once.
    eager = scheduled_run(schedule, compiled=False)
    with dynamo_counts() as c:
        compiled = scheduled_run(schedule, compiled=True)
        assert c["stats"]["unique_graphs"] == graphs
        assert dict(c["graph_break"]) == {} and dict(c["unimplemented"]) == {}
    for a, b in zip(eager[0], compiled[0]):
        assert torch.equal(a, b)  # same masks at every step
    for a, b in zip(eager[1], compiled[1]):
        assert torch.equal(a, b)
    # masks were really drawn: the outputs differ from those of the same run with every rate 0
    never_on = scheduled_run("late", compiled=False, cutoff=100)
    assert not torch.equal(eager[0][3], never_on[0][3])


def test_float_rates_recompile_at_every_new_rate() -> None:
    # the failure this mechanism removes, seen by the same counters: plain float writes of 3 rates give at
    # least one graph per rate (dynamo then also recompiles the blocks' frames one by one: 9 here)
    model = every_kind()
    found = find_drop_rate_modules(model, include_dropout=True)

    def write(step: int) -> None:
        for f, t in zip(found, TARGETS):
            setattr(f.module, f.attr, t * (step + 1) / 3)

    with dynamo_counts() as c:
        train(model, torch.compile(model, backend="aot_eager"), write, steps=3)
        assert c["stats"]["unique_graphs"] >= 3


class LitNet(L.LightningModule):
    def __init__(self, compiled: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(4, 8),
            Block(DropPath(0.0)),
            Block(torchvision.ops.StochasticDepth(0.0, "row")),
            Block(timm.layers.DropPath(0.1)),
            nn.Dropout(0.3),
            nn.Linear(8, 2),
        )
        self.forward_fn = torch.compile(self.net, backend="aot_eager") if compiled else self.net

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.forward_fn(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.forward_fn(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(compiled: bool, sanity: int = 0) -> tuple[LitNet, list[float]]:
    L.seed_everything(0)
    lit = LitNet(compiled)
    cb = StochasticDepthScheduler(
        max_rate=0.3,
        rule="huang",
        schedule="warmup",
        cutoff=1.0,
        cutoff_unit="fraction",
        include_dropout=True,
        verbose=0,
    )
    seen: list[float] = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
            seen.append(pl_module.net[3].drop.drop_prob)

    # 2 epochs x 4 optimizer steps, validation after each epoch (eval mode: its own graph)
    trainer = fast_trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[cb, Spy()],
        max_epochs=2,
        limit_val_batches=1,
        num_sanity_val_steps=sanity,
    )
    trainer.fit(lit, classification_loader(16, 4), classification_loader(8, 4))
    return lit, seen


@pytest.mark.parametrize("sanity", [0, 1], ids=["no-sanity-check", "sanity-check"])
def test_scheduled_fit_compiles_one_training_graph_and_matches_eager_bitwise(sanity: int) -> None:
    # with Lightning's sanity check the validation graph is compiled before training starts: the scheduled
    # classes are bound at fit start, so it is the same graph as every later validation's
    eager, rates = _fit(compiled=False, sanity=sanity)
    # the deepest level's rate (huang over 3 levels, max 0.3) warms up over the 8 steps of the fit
    assert rates == pytest.approx([0.3 * s / 8 for s in range(8)])
    with dynamo_counts() as c:
        compiled, rates_compiled = _fit(compiled=True, sanity=sanity)
        # one graph for training (every rate of the warm-up) and one for validation (eval mode)
        assert c["stats"]["unique_graphs"] == 2
        assert dict(c["graph_break"]) == {} and dict(c["unimplemented"]) == {}
    assert rates_compiled == rates
    for (name, a), b in zip(eager.net.named_parameters(), compiled.net.parameters()):
        assert torch.equal(a, b), name
    # after the fit: classes and rates as before
    assert type(compiled.net[2].drop) is torchvision.ops.StochasticDepth and compiled.net[2].drop.p == 0.0
    assert type(compiled.net[4]) is nn.Dropout and compiled.net[4].p == 0.3


# ------------------------------------------------------------------ each swapped class draws as the original
def _same(run: Callable[[], Tensor], ref: Callable[[], Tensor], seed: int) -> None:
    torch.manual_seed(seed)
    ours, after_ours = run(), torch.rand(4)
    torch.manual_seed(seed)
    expected, after_ref = ref(), torch.rand(4)
    assert torch.equal(ours, expected)
    assert torch.equal(after_ours, after_ref)  # the generator advanced identically


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda p: torchvision.ops.StochasticDepth(p, "row"), (6, 3, 4)),
        (lambda p: torchvision.ops.StochasticDepth(p, "batch"), (6, 3, 4)),
        (lambda p: timm.layers.DropPath(p), (6, 5)),
        (lambda p: timm.layers.DropPath(p, scale_by_keep=False), (6, 5)),
        (lambda p: DropPath(p, mode="batch"), (6, 5)),
        (lambda p: nn.Dropout(p), (6, 5)),
        (lambda p: nn.Dropout(p, inplace=True), (6, 5)),
        (lambda p: nn.Dropout1d(p), (6, 5, 3)),
        (lambda p: nn.Dropout1d(p), (5, 3)),
        (lambda p: nn.Dropout2d(p), (2, 5, 3, 3)),
        (lambda p: nn.Dropout2d(p, inplace=True), (5, 3, 3)),
        (lambda p: nn.Dropout3d(p), (2, 4, 2, 2, 2)),
        (lambda p: nn.Dropout3d(p), (4, 2, 2, 2)),
        (lambda p: nn.AlphaDropout(p), (6, 5)),
        (lambda p: nn.FeatureAlphaDropout(p), (2, 5, 3)),
    ],
)
@same_bernoulli_stream
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_tensor_rate_draws_bitwise_what_the_original_class_draws(
    make: Callable[[float], nn.Module], shape: tuple[int, ...], p: float
) -> None:
    reference = make(p)
    module = make(0.0)
    original = type(module)
    table = ScheduledRates(find_drop_rate_modules(module, include_dropout=True), [p], "cpu")
    table.apply(1.0, 1.0)
    if isinstance(module, DropPath):  # ours reads the tensor natively
        assert module._rate is not None and module.p == p
    else:  # the others by a swapped class
        assert type(module) is not original and isinstance(module, original)
    x = torch.randn(shape)
    for seed in range(3):
        _same(lambda: module(x.clone()), lambda: reference(x.clone()), seed)
    module.eval()
    assert module(x) is x
    table.release()
    assert type(module) is original


@pytest.mark.parametrize(
    "make",
    [
        lambda: torchvision.ops.StochasticDepth(0.0, "row"),
        lambda: timm.layers.DropPath(0.0),
        lambda: nn.Dropout(0.0),
        lambda: nn.Dropout2d(0.0),
    ],
    ids=["torchvision", "timm", "dropout", "dropout2d"],
)
def test_eval_forward_never_reads_the_rate_slot(make: Callable[[], nn.Module]) -> None:
    # An eval graph that read the slot would be guarded on it, and older dynamo (torch 2.4) compiles the
    # validation graph again when the slot changes from its sanity-check value (None) to the rate view.
    module = make()
    table = ScheduledRates(find_drop_rate_modules(module, include_dropout=True), [0.2], "cpu")
    table.apply(1.0, 1.0)
    module.eval()
    del module.__dict__["_scheduled_rate"]  # any read of the slot now raises
    x = torch.randn(4, 3, 2, 2)
    assert module(x) is x
    module.__dict__["_scheduled_rate"] = None
    table.release()


def test_off_state_draws_nothing_and_swapped_models_copy_and_save() -> None:
    model = every_kind()
    found = find_drop_rate_modules(model, include_dropout=True)
    table = ScheduledRates(found, [0.0, 0.2, 0.3, 0.2, 0.0], "cpu")
    table.apply(0.0, 0.0)  # every rate 0 now and at the next step: the no-draw path
    x = torch.randn(4, 3, 8)
    torch.manual_seed(0)
    y = model(x)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)  # no random number was drawn
    assert torch.equal(y, model.eval()(x))  # and every drop was the identity
    model.train()
    table.apply(0.0, 1.0)  # zero for one step only: tensor path (one graph), rate-0 masks drawn
    assert model[1].drop._scheduled_rate is not None and model[0].drop._rate is None  # target 0 stays off
    # a model holding swapped classes can be deep-copied and saved mid-fit
    clone = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    assert type(clone[1].drop).__name__ == "_ScheduledStochasticDepth"
    table.release()
    assert [type(m).__name__ for m in (model[1].drop, model[2].drop, model[3], model[5])] == [
        "StochasticDepth",
        "DropPath",
        "Dropout",
        "Dropout1d",
    ]


def test_protocol_and_subclass_modules_get_attribute_writes_and_a_compile_warning() -> None:
    class MyDrop(nn.Module):
        drop_rate_attribute = "rate"

        def __init__(self) -> None:
            super().__init__()
            self.rate = 0.2

        def forward(self, x: Tensor) -> Tensor:
            return nn.functional.dropout(x, self.rate, self.training)

    class MyStochasticDepth(torchvision.ops.StochasticDepth):
        pass

    model = nn.Sequential(nn.Linear(4, 4), MyDrop(), Block(MyStochasticDepth(0.1, "row"), 4))
    table = ScheduledRates(find_drop_rate_modules(model), [0.2, 0.1], "cpu")
    assert (table.tensor_bound, table.attribute_bound) == (0, 2)
    assert table.attribute_bound_names() == ["1", "2.drop"]
    table.apply(0.5, 0.5)
    assert model[1].rate == 0.1 and model[2].drop.p == 0.05
    assert type(model[2].drop) is MyStochasticDepth  # a subclass keeps its own class (and forward)
    table.release()

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.compile(model, backend="aot_eager")

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return self.net(batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    cb = StochasticDepthScheduler(schedule="warmup", cutoff=2, verbose=0)
    with pytest.warns(UserWarning, match="2 scheduled modules keep their rate in a float attribute"):
        trainer = fast_trainer(accelerator="cpu", devices=1, callbacks=[cb], max_epochs=1, max_steps=1)
        trainer.fit(Lit(), classification_loader(4, 4))
    torch._dynamo.reset()


class SideBySide(nn.Module):
    """Every kind applied to the same input, outputs stacked: each module's mask is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.drops = nn.ModuleList(
            [
                DropPath(0.0),
                torchvision.ops.StochasticDepth(0.0, "row"),
                timm.layers.DropPath(0.0),
                nn.Dropout(0.0),
                nn.Dropout1d(0.0),
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([d(x) for d in self.drops])


@pytest.mark.gpu
@pytest.mark.parametrize("fallback_random", [True, False])
def test_cuda_inductor_schedule_compiles_once_and_draws_the_eager_masks(fallback_random: bool) -> None:
    import torch._inductor.config

    model = SideBySide().cuda()
    found = find_drop_rate_modules(model, include_dropout=True)
    x = torch.rand(16, 4, 8, device="cuda") + 0.5  # strictly positive: an output of 0 means dropped

    def masks(forward: Callable[[Tensor], Tensor]) -> list[Tensor]:
        table = ScheduledRates(found, TARGETS, "cuda")
        torch.manual_seed(7)
        out = []
        for step in range(6):
            table.apply((step + 1) / 6, (step + 2) / 6)
            out.append((forward(x) == 0).cpu())
        table.release()
        return out

    eager = masks(model)
    torch._inductor.config.fallback_random = fallback_random
    try:
        with dynamo_counts() as c:
            compiled = masks(torch.compile(model))
            assert c["stats"]["unique_graphs"] == 1 and dict(c["graph_break"]) == {}
    finally:
        torch._inductor.config.fallback_random = False
    # with fallback_random every draw is ATen's; without, inductor may generate its own numbers on CUDA
    # (on CPU it keeps ATen's bernoulli for a tensor probability: see benchmarks/compile_schedule.py)
    if fallback_random:
        assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
