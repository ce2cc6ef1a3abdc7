"""drop_path / DropPath against torchvision and timm, statistics, gradients; model surgery on ResNets."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import stochastic_depth

from lightning_reg.stochastic_depth.layers import (
    DropPath,
    add_stochastic_depth,
    attach_drop_path,
    drop_path,
    find_drop_rate_modules,
)
from tests.stochastic_depth._rng import same_bernoulli_stream


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(8, 3), (6, 4, 5, 5)])
def test_same_draws_as_torchvision(mode: str, p: float, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    for seed in range(5):
        torch.manual_seed(seed)
        ours = drop_path(x, p, training=True, mode=mode)
        after_ours = torch.rand(3)
        torch.manual_seed(seed)
        ref = stochastic_depth(x, p, mode, training=True)
        after_ref = torch.rand(3)
        assert torch.equal(ours, ref)
        assert torch.equal(after_ours, after_ref)  # the RNG advanced identically


def test_same_draws_as_timm_including_unscaled() -> None:
    timm_drop = pytest.importorskip("timm.layers.drop")
    x = torch.randn(16, 7)
    for scale in (True, False):
        torch.manual_seed(3)
        ours = drop_path(x, 0.3, training=True, mode="row", scale_by_keep=scale)
        torch.manual_seed(3)
        ref = timm_drop.drop_path(x, 0.3, True, scale_by_keep=scale)
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_expectation_preserved_row_mode(p: float) -> None:
    # One draw per row; each row is Bernoulli(keep) / keep: mean 1, variance p / keep.
    n = 200_000
    torch.manual_seed(0)
    y = drop_path(torch.ones(n, 2), p, training=True, mode="row")
    keep = 1 - p
    values = torch.unique(y).tolist()
    assert values[0] == 0.0 and values[1] == pytest.approx(1 / keep, rel=1e-6) and len(values) == 2
    assert torch.equal(y[:, 0], y[:, 1])  # whole row kept or dropped together
    tol = 5 * math.sqrt(p / keep / n)
    assert abs(y[:, 0].mean().item() - 1.0) < tol


def test_expectation_preserved_batch_mode_and_unscaled() -> None:
    p, draws = 0.3, 4000
    torch.manual_seed(1)
    outs = torch.stack([drop_path(torch.ones(4, 3), p, training=True, mode="batch") for _ in range(draws)])
    per_draw = outs.flatten(1)
    # whole batch kept or dropped together
    assert torch.equal(per_draw.min(1).values, per_draw.max(1).values)
    keep = 1 - p
    assert abs(per_draw[:, 0].mean().item() - 1.0) < 5 * math.sqrt(p / keep / draws)
    # without scaling the mean is the keep probability (variance keep * p)
    y = drop_path(torch.ones(100_000, 1), p, training=True, mode="row", scale_by_keep=False)
    assert abs(y.mean().item() - keep) < 5 * math.sqrt(keep * p / 100_000)


def test_identity_in_eval_mode_and_at_zero_rate() -> None:
    x = torch.randn(5, 3)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    layer = DropPath(0.7).eval()
    assert layer(x) is x


def test_gradients_flow_only_through_kept_samples() -> None:
    p = 0.5
    torch.manual_seed(4)
    x = (torch.rand(64, 3) + 0.5).requires_grad_()  # strictly positive, so y == 0 means dropped
    y = drop_path(x, p, training=True)
    (y * torch.arange(1.0, 4.0)).sum().backward()
    kept = (y != 0).all(dim=1)
    assert 0 < int(kept.sum()) < 64
    expected = torch.where(kept[:, None], torch.arange(1.0, 4.0) / (1 - p), torch.zeros(3))
    assert torch.allclose(x.grad, expected)
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))


def test_droppath_module_rate_changes_at_run_time_and_repr() -> None:
    layer = DropPath(0.25)
    assert repr(layer) == "DropPath(p=0.25, mode=row)"
    assert (
        repr(DropPath(0.1, mode="batch", scale_by_keep=False))
        == "DropPath(p=0.1, mode=batch, scale_by_keep=False)"
    )
    x = torch.ones(1000, 1)
    layer.p = 1.0
    assert torch.equal(layer(x), torch.zeros_like(x))
    layer.p = 0.0
    assert layer(x) is x
    assert list(layer.parameters()) == [] and list(layer.buffers()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1.5}, r"`p` must be a number in \[0, 1\]; got 1.5"),
        ({"p": -0.1}, r"got -0.1"),
        ({"mode": "col"}, "`mode` must be one of 'row', 'batch'; got 'col'"),
    ],
)
def test_droppath_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DropPath(**kwargs)
    with pytest.raises(ValueError, match=match):
        drop_path(torch.ones(2, 2), **{"p": 0.1, **kwargs})


# ---------------------------------------------------------------- surgery


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def test_resnet18_surgery_keeps_state_dict_and_eval_outputs() -> None:
    timm_drop = pytest.importorskip("timm.layers.drop")
    plain = _resnet18().eval()
    # non-trivial BN statistics so eval mode is not a pass-through
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model = copy.deepcopy(plain)
    layers = add_stochastic_depth(model, 0.2, rule="linear")
    assert len(layers) == 8  # resnet18: 2+2+2+2 BasicBlocks
    assert [m.p for m in layers] == timm_drop.calculate_drop_path_rates(0.2, 8)
    assert list(model.state_dict()) == list(plain.state_dict())
    fresh = _resnet18()
    add_stochastic_depth(fresh, 0.2)
    fresh.load_state_dict(plain.state_dict(), strict=True)  # original checkpoint loads
    fresh.eval()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = plain(x)
        assert torch.equal(model(x), ref)
        assert torch.equal(fresh(x), ref)
    # modified model's state dict also loads into the unmodified model
    plain2 = _resnet18()
    plain2.load_state_dict(model.state_dict(), strict=True)


def _reference_block_forward(block: nn.Module, x: torch.Tensor, p: float, bottleneck: bool) -> torch.Tensor:
    out = block.relu(block.bn1(block.conv1(x)))
    if bottleneck:
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    out = stochastic_depth(out, p, "row", training=True)
    identity = x if block.downsample is None else block.downsample(x)
    return block.relu(out + identity)


@pytest.mark.parametrize("bottleneck", [False, True])
def test_training_forward_equals_hand_written_block_with_torchvision_stochastic_depth(
    bottleneck: bool,
) -> None:
    torch.manual_seed(0)
    if bottleneck:
        block = Bottleneck(16, 4)  # 16 -> 16 channels, no downsample
    else:
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        block = BasicBlock(8, 16, stride=2, downsample=down)
    net = nn.Sequential(block).train()
    ref_block = copy.deepcopy(block)
    (layer,) = add_stochastic_depth(net, 0.5, rule="uniform")
    assert layer.p == 0.5
    x = torch.randn(32, 16 if bottleneck else 8, 8, 8)
    torch.manual_seed(7)
    out = net(x)
    torch.manual_seed(7)
    ref = _reference_block_forward(ref_block, x, 0.5, bottleneck)
    assert torch.equal(out, ref)
    # some samples were dropped, some kept (32 rows at p=0.5)
    branch_ref = copy.deepcopy(ref_block).eval()
    assert not torch.equal(out, _reference_block_forward(branch_ref, x, 0.0, bottleneck))


class _MyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.branch(x))


def _my_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), *[_MyBlock(6) for _ in range(4)], nn.Linear(6, 2))


def test_generic_blocks_via_branch_ends_huang_rule_and_reapply() -> None:
    net = _my_net()
    keys = list(net.state_dict())
    layers = add_stochastic_depth(net, 0.4, rule="huang", branch_ends={_MyBlock: "branch.2"})
    assert [m.p for m in layers] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert list(net.state_dict()) == keys
    # applying again updates rates, adds no second DropPath or hook
    layers2 = add_stochastic_depth(net, 0.2, rule="uniform", branch_ends={_MyBlock: "branch.2"})
    assert [m is n for m, n in zip(layers, layers2)] == [True] * 4
    assert [m.p for m in layers] == [0.2] * 4
    assert sum(isinstance(m, DropPath) for m in net.modules()) == 4
    assert all(len(b.branch[2]._forward_hooks) == 1 for b in net[1:5])

    # training forward of one block equals x + drop_path(branch(x)) with the same RNG state
    block = net[1]
    x = torch.randn(50, 6)
    torch.manual_seed(11)
    out = block(x)
    torch.manual_seed(11)
    last = block.branch[2]  # calling it would run its hook: compute the plain branch functionally
    branch = nn.functional.linear(block.branch[1](block.branch[0](x)), last.weight, last.bias)
    assert torch.equal(out, torch.relu(x + stochastic_depth(branch, 0.2, "row")))


def test_surgery_survives_deepcopy_pickle_and_torch_save() -> None:
    net = _my_net()
    add_stochastic_depth(net, 0.5, branch_ends={_MyBlock: "branch"})
    clone = copy.deepcopy(net)
    found = find_drop_rate_modules(clone)
    assert len(found) == 4
    # the clone's hooks use the clone's own DropPath modules
    for f in found:
        f.module.p = 0.0
    x = torch.randn(20, 4)
    clone.train()
    net.eval()
    assert torch.equal(clone(x), net(x))  # clone: p = 0 everywhere; net: eval -> identity
    restored = pickle.loads(pickle.dumps(net))
    assert [f.module.p for f in find_drop_rate_modules(restored)] == [
        f.module.p for f in find_drop_rate_modules(net)
    ]
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False).eval()
    assert torch.equal(loaded(x), net(x))


def test_surgery_errors() -> None:
    with pytest.raises(
        ValueError, match="No residual block found in Sequential.*BasicBlock.*Bottleneck.*branch_ends"
    ):
        add_stochastic_depth(nn.Sequential(nn.Linear(2, 2)), 0.1)
    with pytest.raises(ValueError, match="has no submodule 'nope'"):
        add_stochastic_depth(_my_net(), 0.1, branch_ends={_MyBlock: "nope"})
    with pytest.raises(ValueError, match=r"`max_rate` must be a number in \[0, 1\); got 1.0"):
        add_stochastic_depth(_resnet18(), 1.0)
    with pytest.raises(ValueError, match="`rule` must be one of 'linear', 'huang', 'uniform'"):
        add_stochastic_depth(_resnet18(), 0.1, rule="exp")
    holder = nn.Linear(2, 2)
    holder.drop_path = nn.Identity()
    with pytest.raises(ValueError, match="already has an attribute 'drop_path'"):
        attach_drop_path(holder, 0.1)


def test_find_drop_rate_modules_kinds_levels_and_protocol() -> None:
    timm_layers = pytest.importorskip("timm.layers")

    class MyDrop(nn.Module):
        drop_rate_attribute = "rate"

        def __init__(self) -> None:
            super().__init__()
            self.rate = 0.3

    blocks = nn.ModuleList(
        [
            nn.ModuleDict({"a": DropPath(0.1), "b": DropPath(0.1)}),
            nn.ModuleDict({"a": torchvision.ops.StochasticDepth(0.2, "row")}),
            nn.ModuleDict({"a": timm_layers.DropPath(0.3), "d": nn.Dropout(0.5)}),
            nn.ModuleDict({"a": MyDrop(), "d": nn.Dropout2d(0.1)}),
        ]
    )
    found = find_drop_rate_modules(blocks)
    assert [(f.name, f.attr, f.level) for f in found] == [
        ("0.a", "p", 0),
        ("0.b", "p", 0),
        ("1.a", "p", 1),
        ("2.a", "drop_prob", 2),
        ("3.a", "rate", 3),
    ]
    with_dropout = find_drop_rate_modules(blocks, include_dropout=True)
    assert [(f.name, f.is_dropout, f.level) for f in with_dropout[5:]] == [
        ("2.d", True, -1),
        ("3.d", True, -1),
    ]


# ---------------------------------------------------------------- argument order, tensor rates, torch.fx


def test_positional_misuse_is_impossible_and_types_are_checked() -> None:
    x = torch.ones(4, 3)
    # torchvision's order (input, p, mode, training): refused instead of silently running row mode
    with pytest.raises(TypeError, match="takes 2 positional arguments but 3 were given"):
        drop_path(x, 0.5, "batch")  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 2 positional arguments but 4 were given"):
        drop_path(x, 0.5, True, "batch")  # type: ignore[misc]  # the old order
    with pytest.raises(TypeError, match="`training` must be a bool"):
        drop_path(x, 0.5, training="batch")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`scale_by_keep` must be a bool"):
        drop_path(x, 0.5, scale_by_keep=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`p` must be a number in \\[0, 1\\]; got '0.5' of type str"):
        drop_path(x, "0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="0-d floating-point tensor; got a tensor of shape \\(2,\\)"):
        drop_path(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        drop_path(x, torch.tensor(0))
    with pytest.raises(TypeError, match="`scale_by_keep` must be a bool"):
        DropPath(0.1, scale_by_keep="no")  # type: ignore[arg-type]


@same_bernoulli_stream
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_tensor_rate_draws_what_the_number_draws(mode: str) -> None:
    x = torch.randn(64, 5)
    for p in (0.1, 0.37, 0.9):
        torch.manual_seed(0)
        ours = drop_path(x, torch.tensor(p, dtype=torch.float64), training=True, mode=mode)
        after_ours = torch.rand(2)
        torch.manual_seed(0)
        ref = stochastic_depth(x, p, mode, training=True)
        assert torch.equal(ours, ref) and torch.equal(torch.rand(2), after_ours)
    # a tensor rate of 0 still draws (no branch on the value), and returns x unchanged
    torch.manual_seed(0)
    assert torch.equal(drop_path(x, torch.tensor(0.0, dtype=torch.float64), training=True), x)
    assert drop_path(x, torch.tensor(0.5), training=False) is x
    # a DropPath bound to a rate tensor reads it; setting p writes it
    layer = DropPath(0.2)
    layer._rate = torch.zeros((), dtype=torch.float64)
    layer.p = 0.3
    assert layer._rate.item() == 0.3 and layer.p == 0.3


class _Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.drop_path = DropPath(0.5, mode="batch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.fc(x))


def test_drop_path_is_one_fx_node_and_feature_extraction_works() -> None:
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = nn.Sequential(_Res(), _Res())
    traced = torch.fx.symbolic_trace(model)
    calls = [n for n in traced.graph.nodes if n.op == "call_function" and n.target is drop_path]
    assert len(calls) == 2  # one leaf node per DropPath, nothing traced inside it
    assert all(n.kwargs["mode"] == "batch" and n.kwargs["training"] is True for n in calls)
    assert not any("bernoulli" in str(n.target) for n in traced.graph.nodes)
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert "0.drop_path.drop_path" in train_nodes and "0.drop_path" not in eval_nodes  # eval: identity
    extractor = create_feature_extractor(
        model,
        train_return_nodes={"0.drop_path.drop_path": "dropped", "1.add": "out"},
        eval_return_nodes={"1.add": "out"},
    )
    x = torch.randn(4, 3)
    torch.manual_seed(0)
    got = extractor(x)
    torch.manual_seed(0)
    h = model[0].fc(x)
    dropped = drop_path(h, 0.5, training=True, mode="batch")
    assert torch.equal(got["dropped"], dropped)
    out = (x + dropped) + drop_path(model[1].fc(x + dropped), 0.5, training=True, mode="batch")
    assert torch.equal(got["out"], out)


def test_a_sequential_branch_end_drops_once_not_twice() -> None:
    # a child added to an nn.Sequential would also run as one of its steps: the DropPath goes on its last
    # module instead, and the branch is dropped exactly once (reference: x + stochastic_depth(branch(x)))
    net = _my_net()
    (first, *_) = add_stochastic_depth(net, 0.5, rule="uniform", branch_ends={_MyBlock: "branch"})
    block = net[1]
    assert first is block.branch[2].drop_path and len(block.branch) == 3
    x = torch.randn(64, 6)
    torch.manual_seed(4)
    out = block.train()(x)
    torch.manual_seed(4)
    last = block.branch[2]
    branch = nn.functional.linear(block.branch[1](block.branch[0](x)), last.weight, last.bias)
    assert torch.equal(out, torch.relu(x + stochastic_depth(branch, 0.5, "row")))
