"""Pure-PyTorch gradient statistics and clipping rules vs independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_reg.gradients.functional import (
    AutoClipState,
    ZClipState,
    agc_clip_,
    autoclip_step,
    check_norm_type,
    clip_grads_by_norm_,
    clip_grads_by_value_,
    grad_norms,
    group_by_module_depth,
    group_by_param_groups,
    group_by_patterns,
    nonfinite_count,
    per_tensor_norms,
    reduce_norms,
    zclip_step,
)


def _model_with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 3)
    )
    m(torch.randn(5, 3, 6, 6)).pow(2).sum().backward()
    return m


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
def test_total_and_group_norms_match_concatenated_reference(norm_type: float) -> None:
    m = _model_with_grads()
    params = list(m.parameters())
    grouping = group_by_module_depth(m, depth=1)
    ids = grouping.ids_for(params)
    stats = grad_norms([p.grad for p in params], norm_type, ids, len(grouping.names))
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(stats.total, torch.linalg.vector_norm(flat, norm_type))
    # group reference: concatenate the gradients of the parameters whose name starts with "<i>."
    for gi, name in enumerate(grouping.names):
        members = [p.grad.reshape(-1) for n, p in m.named_parameters() if n.split(".")[0] == name]
        ref = torch.linalg.vector_norm(torch.cat(members), norm_type)
        torch.testing.assert_close(stats.group_norms[gi], ref)
    for p, v in zip(params, stats.per_tensor):
        torch.testing.assert_close(v, torch.linalg.vector_norm(p.grad, norm_type))


def test_mixed_dtypes_and_ungrouped_and_reduce_fn() -> None:
    g32 = torch.randn(10)
    g16 = torch.randn(7).to(torch.bfloat16)
    g64 = torch.randn(3, dtype=torch.float64)
    grads = [g32, g16, g64]
    flat = torch.cat([g.double().reshape(-1) for g in grads])
    # group 0 = g32 and g64; g16 is ungrouped (id == num_groups)
    s = grad_norms(grads, 2.0, torch.tensor([0, 1, 0]), num_groups=1)
    torch.testing.assert_close(s.total.double(), flat.norm(), rtol=1e-5, atol=1e-6)
    ref_group = torch.cat([g32.double(), g64]).norm()
    torch.testing.assert_close(s.group_norms[0].double(), ref_group, rtol=1e-5, atol=0)
    # a reduce_fn that doubles the powered sums (as if 2 identical shards): norms grow by sqrt(2)
    total2, groups2 = reduce_norms(s.per_tensor, 2.0, torch.tensor([0, 1, 0]), 1, reduce_fn=lambda t: 2 * t)
    torch.testing.assert_close(total2, s.total * math.sqrt(2))
    torch.testing.assert_close(groups2, s.group_norms * math.sqrt(2))


def test_nonfinite_count_and_empty() -> None:
    a = torch.tensor([1.0, float("nan"), 2.0, float("inf")])
    b = torch.tensor([[float("-inf"), 0.0], [3.0, 4.0]])
    c = torch.zeros(5)
    ref = sum(int((~torch.isfinite(t)).sum()) for t in (a, b, c))
    assert int(nonfinite_count([a, b, c])) == ref == 3
    assert grad_norms([]).total.item() == 0.0


def test_grouping_helpers() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    g2 = group_by_module_depth(m, depth=2)
    # groups are modules, never single parameters: the shallow leaf `0` stays whole at depth 2
    assert g2.names == ["0", "1.0", "1.1"]
    assert g2.index[id(m[1][1].bias)] == 2 and g2.index[id(m[0].bias)] == g2.index[id(m[0].weight)] == 0
    root = nn.Module()
    root.scale = nn.Parameter(torch.ones(1))  # a parameter of the root: no module path, its own group
    root.net = nn.Linear(2, 2)
    assert group_by_module_depth(root, depth=3).names == ["scale", "net"]
    opt = torch.optim.SGD(
        [{"params": [m[0].weight], "name": "enc"}, {"params": list(m[1].parameters())}], lr=0.1
    )
    gp = group_by_param_groups(opt)
    assert gp.names == ["enc", "group_1"] and gp.index[id(m[1][0].weight)] == 1
    # the three selector forms: a dotted prefix, a glob, a regex; the first matching group wins
    for norm, bias in (("1.1", "*.bias"), ("1.1.*", "re:bias$"), ("re:^1\\.1\\.", "*bias")):
        gr = group_by_patterns(m, {"norm": norm, "bias": bias, "none": "nothing.here"})
        assert gr.index[id(m[1][1].bias)] == 0
        assert gr.index[id(m[0].bias)] == 1
        assert id(m[0].weight) not in gr.index
        assert gr.ids_for([m[0].weight, m[0].bias]).tolist() == [3, 1]
        assert gr.empty_groups() == ["none"]
    with pytest.raises(ValueError, match="looks like a regular expression"):
        group_by_patterns(m, {"bias": "bias$"})
    with pytest.raises(ValueError, match="depth"):
        group_by_module_depth(m, 0)


def test_clip_by_norm_matches_torch() -> None:
    for max_norm in (0.05, 1e6):
        a, b = _model_with_grads(), _model_with_grads()
        total, coef = clip_grads_by_norm_(a.parameters(), max_norm)
        ref_total = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
        torch.testing.assert_close(total, ref_total)
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad)
        assert (coef < 1) == (max_norm < 1)


def test_clip_by_value_matches_torch() -> None:
    a, b = _model_with_grads(), _model_with_grads()
    clip_grads_by_value_(a.parameters(), 0.1)
    torch.nn.utils.clip_grad_value_(b.parameters(), 0.1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)


def _agc_reference(params: list[nn.Parameter], clip_factor: float, eps: float) -> None:
    """Plain per-unit loop: unit = one slice along dim 0 (whole tensor for ndim <= 1)."""
    for p in params:
        g = p.grad
        units = [slice(None)] if p.ndim <= 1 else range(p.shape[0])
        for u in units:
            w_norm = max(float(p.detach()[u].double().norm()), eps)
            g_norm = float(g[u].double().norm())
            max_norm = clip_factor * w_norm
            if g_norm > max_norm:
                g[u] = g[u] * (max_norm / g_norm)


def test_agc_matches_per_unit_loop_and_eps_floor() -> None:
    a, b = _model_with_grads(), _model_with_grads()
    with torch.no_grad():  # zero-initialised bias: the eps floor must keep its gradient non-zero
        a[4].bias.zero_()
        b[4].bias.zero_()
    agc_clip_(list(a.parameters()), clip_factor=0.02, eps=1e-3)
    _agc_reference(list(b.parameters()), clip_factor=0.02, eps=1e-3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7)
    assert a[4].bias.grad.abs().sum() > 0
    assert float(a[4].bias.grad.norm()) == pytest.approx(0.02 * 1e-3, rel=1e-4)


def test_autoclip_matches_numpy_percentile_with_bounded_history() -> None:
    rng = np.random.default_rng(0)
    norms = rng.lognormal(size=30).astype(np.float32)
    state = AutoClipState.create(history_size=8)
    for t, v in enumerate(norms):
        thr = autoclip_step(state, torch.tensor(v), percentile=25.0)
        window = norms[max(0, t - 7) : t + 1]
        ref = np.percentile(window, 25.0)
        assert float(thr) == pytest.approx(float(ref), rel=1e-5)
    # a non-finite norm is not recorded: threshold from the previous window
    before = state.history.clone()
    thr = autoclip_step(state, torch.tensor(float("nan")), percentile=25.0)
    assert torch.equal(state.history, before)
    assert float(thr) == pytest.approx(float(np.percentile(norms[-8:], 25.0)), rel=1e-5)


def test_zclip_matches_formula_stepped_by_hand() -> None:
    alpha, z_thr, warm = 0.9, 2.0, 3
    seq = [1.0, 1.2, 0.8, 1.1, 5.0, 0.9, float("inf"), 8.0, 1.0]
    state = ZClipState.create(warmup_steps=warm)
    mean = var = None
    buf: list[float] = []
    clipped = 0
    for g in seq:
        target, coef = zclip_step(state, torch.tensor(g), alpha=alpha, z_thresh=z_thr)
        if not math.isfinite(g):
            exp_coef = 1.0  # nothing recorded, nothing clipped
        elif mean is None:
            buf.append(g)
            exp_coef = 1.0
            if len(buf) == warm:
                mean = float(np.mean(buf))
                var = float(np.var(buf, ddof=1))
        else:
            std = math.sqrt(var)
            z = (g - mean) / std
            gc = mean + z_thr**2 / z * std if z > z_thr else g
            exp_coef = gc / g
            mean = alpha * mean + (1 - alpha) * gc
            var = alpha * var + (1 - alpha) * (gc - mean) ** 2
            assert float(target) == pytest.approx(gc, rel=1e-5)
        assert float(coef) == pytest.approx(exp_coef, rel=1e-5)
        if mean is not None:
            assert float(state.mean) == pytest.approx(mean, rel=1e-5)
            assert float(state.var) == pytest.approx(var, rel=1e-4)
        clipped += exp_coef < 1
    assert clipped == 2  # 5.0 and 8.0 are spikes


def test_float64_gradients_are_reduced_in_float64_like_lightning() -> None:
    """Two float64 gradients of 1e23: the total is 1.414e23 (Lightning's grad_norm computes it in float64);
    float32 accumulation gave inf, and norm clipping would then have zeroed the gradients."""
    from lightning.pytorch.utilities import grad_norm

    m = nn.Module()
    m.a = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    m.b = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    m.a.grad = torch.tensor([1e23], dtype=torch.float64)
    m.b.grad = torch.tensor([1e23], dtype=torch.float64)
    lightning_total = grad_norm(m, 2)["grad_2.0_norm_total"]
    stats = grad_norms([m.a.grad, m.b.grad])
    assert stats.per_tensor.dtype == torch.float64
    assert torch.isfinite(stats.total)
    assert float(stats.total) == pytest.approx(float(lightning_total), rel=1e-12)
    _, groups = reduce_norms(stats.per_tensor, 2.0, torch.tensor([0, 0]), 1)
    assert float(groups[0]) == pytest.approx(math.sqrt(2) * 1e23, rel=1e-12)
    total, coef = clip_grads_by_norm_([m.a, m.b], max_norm=1.0)
    assert float(total) == pytest.approx(math.sqrt(2) * 1e23, rel=1e-12)
    assert float(m.a.grad) == pytest.approx(1 / math.sqrt(2), rel=1e-5)  # clipped, not zeroed
    # mixed float32 / float64 buckets: the wider precision wins; bf16 alone still accumulates in float32
    mixed = per_tensor_norms([torch.full((4,), 1e10), torch.full((1,), 1e300, dtype=torch.float64)])
    assert mixed.dtype == torch.float64 and float(mixed[1]) == 1e300
    assert float(mixed[0]) == pytest.approx(2e10)
    assert per_tensor_norms([torch.ones(4, dtype=torch.bfloat16)]).dtype == torch.float32


def test_norm_type_inf_is_accepted_as_a_string_everywhere() -> None:
    grads = [torch.tensor([3.0, -7.0]), torch.tensor([[5.0, 0.5]])]
    assert per_tensor_norms(grads, "inf").tolist() == [7.0, 5.0]
    assert float(grad_norms(grads, "inf").total) == 7.0
    total, _ = reduce_norms(torch.tensor([7.0, 5.0]), "inf")
    assert float(total) == 7.0
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, -4.0])
    total, coef = clip_grads_by_norm_([p], 2.0, norm_type="inf")
    assert float(total) == 4.0 and p.grad.abs().max().item() == pytest.approx(2.0, rel=1e-5)
    # the string form means the same as float("inf"); numeric strings are read as torch reads them
    assert check_norm_type("inf") == check_norm_type(math.inf) == math.inf
    assert check_norm_type("2") == check_norm_type(2) == 2.0
    for bad in ("l2", "nan", "-inf", 0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"`norm_type` must be a number > 0, float\('inf'\) or the"):
            check_norm_type(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`norm_type` must be .*; got True of type bool"):
        check_norm_type(True)  # type: ignore[arg-type]


def test_a_module_group_that_holds_only_its_own_parameters_is_named_own() -> None:
    # a ViT-like model held as `self.net`: `net` owns cls_token directly, its children form their own groups
    root = nn.Module()
    root.net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    root.net.register_parameter("cls_token", nn.Parameter(torch.zeros(2)))
    g = group_by_module_depth(root, depth=1)
    assert g.names == ["net/own", "net.0", "net.1"]
    assert g.index[id(root.net.cls_token)] == 0 and g.index[id(root.net[1][1].bias)] == 2
    # deeper: `net.1` owns a parameter and has children grouped apart -> `net.1/own`; a leaf keeps its name
    root.net[1].register_parameter("scale", nn.Parameter(torch.ones(1)))
    g2 = group_by_module_depth(root, depth=2)
    assert g2.names == ["net/own", "net.0", "net.1/own", "net.1.0", "net.1.1"]
    # a group covering a whole subtree keeps the plain module name
    assert group_by_module_depth(root, depth=1).names == ["net/own", "net.0", "net.1"]


def test_trainable_groups_leave_out_frozen_groups() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
    m[1].requires_grad_(False)
    m[2].weight.requires_grad_(False)  # one trainable parameter is enough
    assert group_by_module_depth(m).trainable_groups(m.parameters()) == {0, 2}
