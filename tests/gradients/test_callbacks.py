"""GradientMonitor and GradientClipping inside real Lightning training (CPU)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_reg.gradients.functional as G
from lightning_reg import GradientClipping, GradientMonitor
from tests.distributed import ddp_gradients
from tests.distributed.launch import run_ddp_script
from tests.helpers import SyncCounter, fast_trainer
from tests.memory_logger import MemoryLogger


def _logged(logger: MemoryLogger, key: str, i: int) -> torch.Tensor:
    return torch.tensor(float(logger.series(key)[i][1]), dtype=torch.float64)


def _flat_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.cat([g.detach().double().reshape(-1) for g in grads]))


class Net(pl.LightningModule):
    """Tiny regression net that records what the optimizer is about to see."""

    def __init__(self, lr: float = 0.05, optimizer: str = "sgd", nan_batches: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)
        self.lr = lr
        self.optimizer_name = optimizer
        self.nan_batches = nan_batches
        self.seen_norms: list[torch.Tensor] = []  # norm of the gradients right before optimizer.step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x).float(), y)
        if batch_idx in self.nan_batches:
            loss = loss * float("nan")
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.seen_norms.append(_flat_norm(grads) if grads else torch.tensor(float("nan")))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :1] * 3 + x[:, 1:2] ** 2) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def _trainer(callbacks: list[Any], logger: Any = None, **kw: Any) -> pl.Trainer:
    args: dict[str, Any] = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=logger if logger is not None else False,
        log_every_n_steps=1,
        callbacks=callbacks,
    )
    return fast_trainer(**{**args, **kw})


def _fit(model: Net, callbacks: list[Any], batch_size: int = 8, logger: Any = None, **kw: Any) -> pl.Trainer:
    trainer = _trainer(callbacks, logger=logger, **kw)
    trainer.fit(model, DataLoader(_data(), batch_size=batch_size, shuffle=False))
    return trainer


# ------------------------------------------------------------------------------------------------------------
def test_monitor_groups_and_clip_norm_match_references_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = Net()
    logger = MemoryLogger()
    mon = GradientMonitor(group_by="module", depth=1, log_ratios=True)
    clip = GradientClipping("norm", max_norm=0.2)

    recorded: dict[str, list[torch.Tensor]] = {"pre": [], "body": [], "head": [], "ratio_head": []}

    class Spy(pl.Callback):  # runs first: sees the unscaled, pre-clip gradients
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            body = [p.grad for p in pl_module.body.parameters()]
            head = [p.grad for p in pl_module.head.parameters()]
            recorded["pre"].append(_flat_norm(body + head))
            recorded["body"].append(_flat_norm(body))
            recorded["head"].append(_flat_norm(head))
            w = torch.linalg.vector_norm(
                torch.cat([p.detach().reshape(-1) for p in pl_module.head.parameters()])
            )
            recorded["ratio_head"].append(_flat_norm(head) / w)

    _fit(model, [Spy(), clip, mon], logger=logger, precision="bf16-mixed")
    steps = 8
    assert len(logger.series("grad/norm_total")) == steps
    close = dict(rtol=1e-5, atol=1e-7)
    for i in range(steps):
        torch.testing.assert_close(
            _logged(logger, "grad/norm_total", i), recorded["pre"][i], **close
        )
        torch.testing.assert_close(
            _logged(logger, "grad/norm/body", i), recorded["body"][i], **close
        )
        torch.testing.assert_close(
            _logged(logger, "grad/norm/head", i), recorded["head"][i], **close
        )
        ratio = _logged(logger, "grad/ratio/head", i)
        torch.testing.assert_close(ratio, recorded["ratio_head"][i].double(), rtol=1e-4, atol=1e-7)
        # clipping: the optimizer sees the clip_grad_norm_ rule, pre * min(1, max_norm / (pre + 1e-6))
        pre = float(recorded["pre"][i])
        expected_post = pre * min(1.0, 0.2 / (pre + 1e-6))
        assert float(model.seen_norms[i]) == pytest.approx(expected_post, rel=1e-4)
        assert float(logger.series("grad/clip/norm_post")[i][1]) == pytest.approx(expected_post, rel=1e-4)
    assert all(float(v) == 0 for _, v in logger.series("grad/nonfinite_count"))
    assert any(float(c) < 1 for _, c in logger.series("grad/clip/coef"))


def test_reads_gradients_once_per_step_when_both_present(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = G._foreach_norm

    def counting(tensors: list[torch.Tensor], norm_type: float) -> Any:
        calls.append(norm_type)
        return real(tensors, norm_type)

    monkeypatch.setattr(G, "_foreach_norm", counting)
    mon = GradientMonitor(log_nonfinite=False, log_max_abs=False)
    _fit(Net(), [mon, GradientClipping("autoclip")], logger=MemoryLogger())
    assert len(calls) == 8  # 8 optimizer steps, one fused norm pass each (one dtype bucket)
    calls.clear()
    _fit(Net(), [GradientClipping("zclip"), mon], logger=MemoryLogger())  # order does not matter
    assert len(calls) == 8


def test_accumulation_one_measurement_per_optimizer_step_of_summed_gradient() -> None:
    torch.manual_seed(0)
    model = Net()
    ref = Net()
    ref.load_state_dict(model.state_dict())
    logger = MemoryLogger()
    _fit(model, [GradientMonitor()], logger=logger, accumulate_grad_batches=4, batch_size=4)
    series = logger.series("grad/norm_total")
    assert len(series) == 64 // 4 // 4  # 4 optimizer steps, one measurement each
    # independent reference for the first optimizer step: sum of the 4 micro-batch gradients of loss / 4
    data = _data()
    ref.zero_grad()
    for k in range(4):
        x, y = data[k * 4 : (k + 1) * 4]
        (nn.functional.mse_loss(ref(x), y) / 4).backward()
    expected = _flat_norm([p.grad for p in ref.parameters()])
    assert float(series[0][1]) == pytest.approx(float(expected), rel=1e-5)


def _count_syncs(callbacks: list[Any], log_every_n_steps: int = 1) -> int:
    torch.manual_seed(0)
    model = Net()
    trainer = _trainer(callbacks, logger=MemoryLogger(), max_steps=4, log_every_n_steps=log_every_n_steps)
    loader = DataLoader(_data(), batch_size=8)
    with SyncCounter() as counter:
        trainer.fit(model, loader)
    return counter.count


def test_host_syncs_only_on_logging_steps_one_per_callback_for_every_algorithm() -> None:
    """Clipping and measuring never sync; writing the logged values costs one sync per logging step."""
    baseline = _count_syncs([])
    for algorithm in ("norm", "value", "agc", "autoclip", "zclip"):
        cbs = [GradientMonitor(group_by="module", log_ratios=True), GradientClipping(algorithm)]
        assert _count_syncs(cbs, log_every_n_steps=0) == baseline, algorithm
        cbs = [GradientMonitor(group_by="module", log_ratios=True), GradientClipping(algorithm)]
        assert _count_syncs(cbs, log_every_n_steps=2) == baseline + 2 * 2, algorithm

    # sanity: the counter does see a sync when one is made
    class Syncing(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            float(next(pl_module.parameters()).grad.sum())

    assert _count_syncs([Syncing()]) == baseline + 4


@pytest.mark.parametrize("algorithm", ["autoclip", "zclip"])
def test_resume_continues_adaptive_state_exactly(algorithm: str, tmp_path: Any) -> None:
    def make_cb() -> GradientClipping:
        if algorithm == "autoclip":
            return GradientClipping(algorithm, percentile=50, history_size=5)
        return GradientClipping(algorithm, zclip_warmup_steps=3, zclip_z_thresh=0.5)

    torch.manual_seed(0)
    init = Net().state_dict()

    full_model, full_cb = Net(), make_cb()
    full_model.load_state_dict(init)
    _fit(full_model, [full_cb], max_epochs=2, deterministic=True)

    half_model, half_cb = Net(), make_cb()
    half_model.load_state_dict(init)
    trainer = _fit(half_model, [half_cb], max_epochs=1, deterministic=True)
    ckpt = str(tmp_path / "half.ckpt")
    trainer.save_checkpoint(ckpt)

    resumed_model, resumed_cb = Net(), make_cb()
    trainer = _trainer([resumed_cb], max_epochs=2, deterministic=True)
    trainer.fit(resumed_model, DataLoader(_data(), batch_size=8), ckpt_path=ckpt)

    for a, b in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    full_state = full_cb.state_dict()[algorithm]
    for k, v in resumed_cb.state_dict()[algorithm].items():
        assert torch.equal(v, full_state[k]), k
    assert int(full_state["count"]) == 16  # 2 epochs x 8 optimizer steps, all recorded


def test_skip_nonfinite_leaves_weights_and_optimizer_state_untouched() -> None:
    torch.manual_seed(0)
    model = Net(optimizer="adam", nan_batches=(3,))
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snap(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            snapshots[batch_idx] = {k: v.clone() for k, v in pl_module.state_dict().items()}

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
        ) -> None:
            if idx == 3:
                opt = trainer.optimizers[0]
                steps = {int(s["step"]) for s in opt.state.values()}
                snapshots[100] = {"adam_steps": torch.tensor(sorted(steps))}
                snapshots[101] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    logger = MemoryLogger()
    clip = GradientClipping("norm", max_norm=1.0, skip_nonfinite=True)
    with pytest.warns(UserWarning, match="non-finite gradients"):
        _fit(model, [Snap(), clip], logger=logger)
    for k, v in snapshots[3].items():
        assert torch.equal(v, snapshots[101][k]), k  # the NaN step changed nothing
    assert snapshots[100]["adam_steps"].tolist() == [3]  # Adam's step counter did not advance either
    assert clip.skipped_steps == 1 and clip.consecutive_skips == 0
    assert int(logger.series("grad/clip/skipped_steps")[-1][1]) == 1
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())


def test_skip_nonfinite_raises_after_consecutive_skips() -> None:
    model = Net(nan_batches=tuple(range(8)))
    with pytest.raises(RuntimeError, match="skipped 3 consecutive"), pytest.warns(UserWarning):
        _fit(model, [GradientClipping("norm", skip_nonfinite=True, max_consecutive_skips=3)])


def test_manual_optimization_helper_does_not_double_clip() -> None:
    class Manual(Net):
        def __init__(self, clip: GradientClipping, call_helper: bool) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.clip = clip
            self.call_helper = call_helper

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            x, y = batch
            self.manual_backward(nn.functional.mse_loss(self(x), y))
            if self.call_helper:
                self.clip.clip_(self.trainer, self, opt)
            opt.step()

    for call_helper in (False, True):
        clip = GradientClipping("autoclip", percentile=0)
        torch.manual_seed(0)
        model = Manual(clip, call_helper)
        _fit(model, [clip])
        assert int(clip.rule.state.count) == 8  # one record per optimizer step, not two
        # percentile 0: every step is clipped to the smallest norm seen so far (<= its own norm)
        assert all(float(n) <= float(model.seen_norms[0]) * (1 + 1e-5) for n in model.seen_norms)


def test_conflicts_and_bad_input() -> None:
    with pytest.raises(MisconfigurationException, match="gradient_clip_val=0.5"):
        _fit(Net(), [GradientClipping()], gradient_clip_val=0.5)
    with pytest.raises(MisconfigurationException, match="Only one"):
        _fit(Net(), [GradientClipping(), GradientClipping("value")])
    with pytest.raises(ValueError, match=r"`algorithm` must be one of .*'zclip'.*got 'l2'"):
        GradientClipping("l2")
    with pytest.raises(ValueError, match="`percentile` must be a number in \\[0, 100\\]; got 150"):
        GradientClipping("autoclip", percentile=150)
    with pytest.raises(ValueError, match="`percentile` is in percent.*0.1.*pass 10 "):
        GradientClipping("autoclip", percentile=0.1)
    assert GradientClipping("autoclip", percentile=0).rule.percentile == 0.0  # the minimum is a valid choice
    with pytest.raises(ValueError, match=r"agc_exclude.*\^head.*looks like a regular expression.*'re:\^head"):
        GradientClipping("agc", agc_exclude=[r"^head\."])
    with pytest.raises(TypeError, match=r"`agc_exclude` must be a list of str.*\['head'\]"):
        GradientClipping("agc", agc_exclude="head")
    with pytest.raises(ValueError, match="zclip_alpha"):
        GradientClipping("zclip", zclip_alpha=1.0)
    with pytest.raises(ValueError, match="skip_nonfinite"):
        GradientClipping(None)
    # an argument of another algorithm would do nothing: refused, naming it and its algorithm
    with pytest.raises(ValueError, match=r"'zclip'\) does not use max_norm=5\.0 \(an argument of 'norm'\)"):
        GradientClipping("zclip", max_norm=5.0)
    with pytest.raises(ValueError, match=r"not use clip_value=0\.5 .*'value'.*percentile=50 .*'autoclip'"):
        GradientClipping("norm", percentile=50, clip_value=0.5)
    with pytest.raises(ValueError, match=r"algorithm=None\) does not use zclip_alpha=0\.9"):
        GradientClipping(None, skip_nonfinite=True, zclip_alpha=0.9)
    # each algorithm's own arguments (and norm_type, shared) are accepted
    GradientClipping("zclip", zclip_alpha=0.9, zclip_z_thresh=3.0, zclip_warmup_steps=5, norm_type=1.0)
    GradientClipping("agc", clip_factor=0.02, agc_eps=1e-4, agc_exclude=["head"])
    GradientClipping("autoclip", percentile=20, history_size=50)
    with pytest.raises(ValueError, match=r"groups the parameters by name, and `group_by=.module.`"):
        GradientMonitor(group_by="module", patterns={"first": "net.1"})
    assert GradientMonitor(patterns={"first": "net.1"}).group_by == "patterns"
    assert GradientMonitor(group_by="patterns", patterns={"first": "net.1"}).group_by == "patterns"
    assert GradientMonitor().group_by == "module"
    with pytest.raises(ValueError, match=r"`group_by` must be one of .*got 'layer'"):
        GradientMonitor(group_by="layer")
    with pytest.raises(ValueError, match="`group_by='patterns'` needs `patterns="):
        GradientMonitor(group_by="patterns")
    with pytest.raises(ValueError, match=r"`log_every_n_steps` must be an int >= 0 or None; got -1"):
        GradientMonitor(log_every_n_steps=-1)
    with pytest.raises(TypeError, match=r"`log_every_n_steps` must be an int >= 0 or None; got 2\.5"):
        GradientClipping(log_every_n_steps=2.5)


def test_logging_interval_and_agc_head_exclusion() -> None:
    logger = MemoryLogger()
    torch.manual_seed(0)
    model = Net()
    head_before = model.head.weight.detach().clone()
    seen_head: list[torch.Tensor] = []
    spy_pre: list[torch.Tensor] = []

    class Spy(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            spy_pre.append(pl_module.head.weight.grad.clone())

    class After(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            seen_head.append(pl_module.head.weight.grad.clone())

    clip = GradientClipping("agc", clip_factor=1e-4, agc_exclude=["head"], log_every_n_steps=3)
    _fit(model, [Spy(), GradientMonitor(log_every_n_steps=4), clip, After()], logger=logger)
    assert [s for s, _ in logger.series("grad/norm_total")] == [3, 7]
    assert [s for s, _ in logger.series("grad/clip/norm_pre")] == [2, 5]
    for a, b in zip(spy_pre, seen_head):
        assert torch.equal(a, b)  # the excluded head is not clipped
    assert not torch.equal(head_before, model.head.weight)
    post = logger.series("grad/clip/norm_post")
    pre = logger.series("grad/clip/norm_pre")
    assert all(float(p) < float(q) for (_, p), (_, q) in zip(post, pre))  # the body was clipped hard


# DDP: 2 CPU processes (gloo) vs one process on the full batch
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_two_processes_match_single_process_on_full_batch(tmp_path: Path) -> None:
    run_ddp_script(Path(ddp_gradients.__file__), tmp_path, timeout=200)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    torch.set_num_threads(1)
    single = ddp_gradients.run(devices=1, batch_size=16)
    assert len(r0["rows"]) == len(single["rows"]) == ddp_gradients.STEPS
    keys = ["grad/norm_total", "grad/norm/body", "grad/norm/head", "grad/clip/norm_pre"]
    keys += ["grad/clip/norm_post"]
    for row0, row1, ref in zip(r0["rows"], r1["rows"], single["rows"]):
        for k in keys:
            assert torch.equal(row0[k], row1[k]), k  # identical on both ranks
            torch.testing.assert_close(row0[k], ref[k], rtol=1e-5, atol=1e-6)
    assert any(float(row["grad/clip/coef"]) < 1 for row in single["rows"])  # zclip did clip somewhere
    for k, v in r0["zclip"].items():
        assert torch.equal(v, r1["zclip"][k]), k  # adaptive state identical on all ranks
        torch.testing.assert_close(v, single["zclip"][k], rtol=1e-5, atol=1e-6)
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k])
        torch.testing.assert_close(v, single["weights"][k], rtol=1e-5, atol=1e-6)


def test_value_clipping_and_param_group_names_in_training() -> None:
    class Grouped(Net):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(
                [{"params": self.body.parameters(), "name": "enc"}, {"params": self.head.parameters()}],
                lr=0.05,
            )

    pre: list[list[torch.Tensor]] = []
    post: list[list[torch.Tensor]] = []

    class Spy(pl.Callback):
        def __init__(self, store: list[list[torch.Tensor]]) -> None:
            self.store = store

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            self.store.append([p.grad.clone() for p in pl_module.parameters()])

    logger = MemoryLogger()
    torch.manual_seed(0)
    model = Grouped()
    mon = GradientMonitor(group_by="param_groups", log_nonfinite=False, log_max_abs=False)
    _fit(model, [Spy(pre), mon, GradientClipping("value", clip_value=0.05), Spy(post)], logger=logger)
    assert len(pre) == len(post) == 8
    for before, after in zip(pre, post):
        ref = [g.clone() for g in before]
        params = [nn.Parameter(torch.zeros_like(g)) for g in ref]
        for p, g in zip(params, ref):
            p.grad = g
        torch.nn.utils.clip_grad_value_(params, 0.05)
        for p, a in zip(params, after):
            assert torch.equal(p.grad, a)
    assert {"grad/norm/enc", "grad/norm/group_1"} <= set(logger.calls[0][1])
    first = logger.series("grad/norm/enc")[0][1]
    n_body = len(list(model.body.parameters()))
    assert float(first) == pytest.approx(float(_flat_norm(pre[0][:n_body])), rel=1e-5)


def test_pattern_groups_use_the_selector_syntax_and_an_empty_group_warns_and_is_not_logged() -> None:
    logger = MemoryLogger()
    monitor = GradientMonitor(patterns={"body": "body", "head": ["head.weight", "re:^head\\.bias$"],
                                        "typo": "haed"}, log_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"pattern group\(s\) \['typo'\] match no parameter"):
        _fit(Net(), [monitor], logger=logger)
    keys = set(logger.calls[0][1])
    assert {"grad/norm/body", "grad/norm/head"} <= keys and "grad/norm/typo" not in keys
    # the group norms are the norms of exactly the selected gradients
    total = float(logger.calls[-1][1]["grad/norm_total"])
    body, head = (float(logger.calls[-1][1][f"grad/norm/{g}"]) for g in ("body", "head"))
    assert total == pytest.approx((body**2 + head**2) ** 0.5, rel=1e-6)


def test_an_option_of_another_rule_is_refused_whatever_its_value() -> None:
    # each value below is the other rule's default: it would do nothing, so it is refused all the same
    with pytest.raises(ValueError, match=r"'agc'\) does not use max_norm=1\.0 \(an argument of 'norm'\)"):
        GradientClipping("agc", max_norm=1.0)
    with pytest.raises(ValueError, match=r"'norm'\) does not use clip_value=1\.0 \(an argument of 'value'\)"):
        GradientClipping("norm", clip_value=1.0)
    with pytest.raises(ValueError, match=r"'zclip'\) does not use percentile=10\.0 .*history_size=1000"):
        GradientClipping("zclip", percentile=10.0, history_size=1000)
    with pytest.raises(ValueError, match=r"'autoclip'\) does not use agc_exclude=\[\] \(an argument of 'agc"):
        GradientClipping("autoclip", agc_exclude=[])
    # a rule's own options, at any value, build that rule; the others stay at the rule's defaults
    clip = GradientClipping("agc", clip_factor=0.01)
    assert type(clip.rule).__name__ == "AGCRule"
    assert (clip.rule.clip_factor, clip.rule.agc_eps) == (0.01, 1e-3)
    assert GradientClipping(None, skip_nonfinite=True).rule is None


def test_norm_type_inf_string_is_accepted_by_both_callbacks() -> None:
    torch.manual_seed(0)
    pre_max: list[float] = []

    class Spy(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            pre_max.append(max(float(p.grad.abs().max()) for p in pl_module.parameters()))

    model = Net()
    logger = MemoryLogger()
    monitor = GradientMonitor(norm_type="inf", log_nonfinite=False)
    clip = GradientClipping("norm", max_norm=0.01, norm_type="inf")
    _fit(model, [Spy(), monitor, clip], logger=logger)
    assert monitor.norm_type == clip.norm_type == math.inf
    assert clip.state_key == GradientClipping("norm", max_norm=0.01, norm_type=math.inf).state_key
    totals = [float(v) for _, v in logger.series("grad/norm_total")]
    assert totals == pytest.approx(pre_max, rel=1e-6)
    assert totals == pytest.approx([float(v) for _, v in logger.series("grad/max_abs")], rel=1e-6)
    post = [float(v) for _, v in logger.series("grad/clip/norm_post")]
    assert post == pytest.approx([min(m, 0.01) for m in pre_max], rel=1e-4)
    with pytest.raises(ValueError, match=r"`norm_type` must be a number > 0, float\('inf'\) or the string"):
        GradientMonitor(norm_type="max")


def test_a_frozen_group_is_not_logged_and_is_named_at_fit_start(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = Net()
    model.body.requires_grad_(False)  # a frozen backbone: no gradient, so no norm (not a norm of 0)
    logger = MemoryLogger()
    with caplog.at_level(logging.INFO):
        _fit(model, [GradientMonitor(log_ratios=True)], logger=logger)
    keys = set().union(*(set(row) for _, row in logger.calls))
    assert {"grad/norm/head", "grad/ratio/head", "grad/norm_total"} <= keys
    assert not {k for k in keys if "body" in k}, keys
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GradientMonitor:")]
    assert len(lines) == 1 and "frozen, not logged while frozen: ['body']" in lines[0], lines
    # unfrozen, the group is logged again
    model.body.requires_grad_(True)
    logger = MemoryLogger()
    _fit(model, [GradientMonitor(verbose=0)], logger=logger)
    assert "grad/norm/body" in logger.calls[0][1]


def test_a_module_s_own_parameters_are_logged_as_its_own_group() -> None:
    class Held(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
            self.net.register_parameter("offset", nn.Parameter(torch.zeros(1)))  # owned by `net` itself

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x) + self.net.offset, y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    logger = MemoryLogger()
    seen: list[float] = []

    class Spy(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            seen.append(float(pl_module.net.offset.grad.abs().sum()))

    _fit(Held(), [Spy(), GradientMonitor(log_nonfinite=False, log_max_abs=False)], logger=logger)
    row = logger.calls[0][1]
    assert set(row) == {"grad/norm_total", "grad/norm/net/own", "grad/norm/net.0", "grad/norm/net.2"}
    assert float(row["grad/norm/net/own"]) == pytest.approx(seen[0], rel=1e-6)  # the offset alone


@pytest.mark.parametrize("monitor_first", [True, False])
def test_callbacks_share_one_read_and_the_monitor_sees_pre_clip_gradients(monitor_first: bool) -> None:
    torch.manual_seed(0)
    pre: list[torch.Tensor] = []

    class Spy(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            flat = torch.cat([p.grad.reshape(-1) for p in pl_module.parameters()])
            pre.append(torch.linalg.vector_norm(flat, 1))

    # another norm type than the clipper's: the monitor still logs the gradients before the clip
    monitor = GradientMonitor(norm_type=1.0, log_nonfinite=False, log_max_abs=False)
    clip = GradientClipping("norm", max_norm=0.01)
    shared: list[Any] = []

    class Shared(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            shared.append((monitor.shared_gradients, clip.shared_gradients))

    logger = MemoryLogger()
    cbs = [Spy(), monitor, clip, Shared()] if monitor_first else [Spy(), clip, monitor, Shared()]
    _fit(Net(), cbs, logger=logger)
    assert shared[0][0] is shared[0][1] is not None
    assert monitor.shared_gradients is None and clip.shared_gradients is None  # dropped at teardown
    logged = [float(v) for _, v in logger.series("grad/norm_total")]
    assert logged == pytest.approx([float(v) for v in pre], rel=1e-5)
    assert all(float(c) < 1 for _, c in logger.series("grad/clip/coef"))  # every step was clipped
