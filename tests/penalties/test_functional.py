from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lightning_reg import DecayRule, PenaltyMixin
from lightning_reg.module.regularized import RegularizedModule
from lightning_reg.penalties import WeightPenalty, elastic_net_penalty, l1_penalty, l2_penalty, proximal_l1_
from lightning_reg.penalties.callback import ProximalL1
from lightning_reg.penalties.functional import (
    add_penalty_grad_,
    decayed_parameters,
    soft_threshold_,
    zero_fraction,
)
from tests.helpers import SyncCounter, classification_loader, fast_trainer


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.ln = nn.LayerNorm(4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight  # tied


def test_decayed_parameters_same_classification_as_weight_decay():
    m = _Tied()
    got = decayed_parameters(m)
    # by hand: weights of Linear layers and the (tied, counted once) embedding; no bias, no norm parameters
    assert [id(p) for p in got] == [id(m.emb.weight), id(m.lin.weight)]
    got = decayed_parameters(m, DecayRule(embeddings=True, bias=False, exclude=["lin.weight"]))
    assert [id(p) for p in got] == [id(m.lin.bias)]
    m.lin.weight.requires_grad_(False)  # frozen parameters are never penalised
    assert [id(p) for p in decayed_parameters(m)] == [id(m.emb.weight)]


def _params():
    torch.manual_seed(0)
    return [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 3)]


def test_penalty_values_vs_formulas():
    ps = _params()
    l1 = sum(p.abs().sum() for p in ps)
    sq = sum((p * p).sum() for p in ps)
    torch.testing.assert_close(l1_penalty(ps), l1)
    torch.testing.assert_close(l2_penalty(ps), 0.5 * sq)
    torch.testing.assert_close(elastic_net_penalty(ps, l1=0.01, l2=0.2), 0.01 * l1 + 0.1 * sq)
    torch.testing.assert_close(elastic_net_penalty(iter(ps), l1=0.3), 0.3 * l1)  # any iterable
    assert elastic_net_penalty(ps) == 0
    # tiny hand-worked case: |1| + |-2| + |0.5| = 3.5; (1 + 4 + 0.25) / 2 = 2.625
    small = [torch.tensor([1.0, -2.0]), torch.tensor([0.5])]
    assert l1_penalty(small).item() == 3.5 and l2_penalty(small).item() == 2.625
    # low precision parameters are summed in float32
    half = [p.to(torch.bfloat16) for p in ps]
    assert l1_penalty(half).dtype == torch.float32
    torch.testing.assert_close(l1_penalty(half), sum(p.float().abs().sum() for p in half))
    with pytest.raises(ValueError, match=r"`l1` must be a finite number >= 0; got -1"):
        elastic_net_penalty(ps, l1=-1)


def test_penalty_gradient_and_sgd_weight_decay_equivalence():
    ps = [p.clone().requires_grad_(True) for p in _params()]
    ps[1].data[0] = 0.0  # sign(0) = 0
    elastic_net_penalty(ps, l1=0.05, l2=0.3).backward()
    for p in ps:
        torch.testing.assert_close(p.grad, 0.05 * torch.sign(p.detach()) + 0.3 * p.detach())
    for use_l1, penalty in ((True, l1_penalty), (False, l2_penalty)):  # each branch alone
        qs = [p.detach().clone().requires_grad_(True) for p in ps]
        (2.0 * penalty(qs)).backward()  # the incoming gradient (2.0) is applied
        for q in qs:
            want = 2.0 * (torch.sign(q.detach()) if use_l1 else q.detach())
            torch.testing.assert_close(q.grad, want)
    # add_penalty_grad_ gives the same gradients without autograd
    qs = [p.detach().clone().requires_grad_(True) for p in ps]
    for q in qs:
        q.grad = torch.zeros_like(q)
    add_penalty_grad_(qs + [torch.zeros(2, requires_grad=True)], l1=0.05, l2=0.3)  # grad None: skipped
    for p, q in zip(ps, qs):
        torch.testing.assert_close(q.grad, p.grad)
    # L2 with coefficient l2 is SGD's weight_decay=l2
    w1 = nn.Parameter(torch.randn(4, 3))
    w2 = nn.Parameter(w1.detach().clone())
    opt1 = torch.optim.SGD([w1], lr=0.1, momentum=0.9, weight_decay=0.01)
    opt2 = torch.optim.SGD([w2], lr=0.1, momentum=0.9)
    for _ in range(3):
        (w1.sum() ** 2).backward()
        opt1.step()
        opt1.zero_grad()
        ((w2.sum() ** 2) + elastic_net_penalty([w2], l2=0.01)).backward()
        opt2.step()
        opt2.zero_grad()
    torch.testing.assert_close(w1, w2)


def test_soft_threshold_vs_hand_exact_zeros():
    torch.manual_seed(1)
    w = torch.randn(1000) * 0.1
    w[:5] = torch.tensor([0.0, 0.05, -0.05, 0.0500001, -0.0499999])
    t = 0.05
    want = torch.sign(w) * torch.clamp(w.abs() - t, min=0.0)  # the textbook formula
    got = [w.clone(), w[:10].clone().reshape(2, 5)]
    soft_threshold_(got, t)
    assert torch.equal(got[0], want)  # bit-identical, exact zeros included
    assert torch.equal(got[1].flatten(), want[:10])
    n_zero = int((w.abs() <= t).sum())
    assert int((got[0] == 0).sum()) == n_zero and n_zero > 300
    unchanged = w.clone()
    soft_threshold_([unchanged], 0.0)
    assert torch.equal(unchanged, w)
    with pytest.raises(ValueError, match=r"`threshold`.*>= 0; got -0.1"):
        soft_threshold_([w], -0.1)


def test_proximal_step_uses_each_group_lr():
    a = nn.Parameter(torch.tensor([0.5, -0.02, 0.03]))
    b = nn.Parameter(torch.tensor([0.5, -0.02, 0.03]))
    c = nn.Parameter(torch.tensor([0.5, -0.02, 0.03]))  # not in the allowed list
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b, c], "lr": 0.01}], lr=0.1)
    proximal_l1_(opt, l1=0.25, params=[a, b])
    # thresholds 0.1 * 0.25 = 0.025 and 0.01 * 0.25 = 0.0025, worked by hand
    torch.testing.assert_close(a.data, torch.tensor([0.5 - 0.025, 0.0, 0.03 - 0.025]))
    torch.testing.assert_close(b.data, torch.tensor([0.5 - 0.0025, -0.02 + 0.0025, 0.03 - 0.0025]))
    assert a.data[1].item() == 0.0  # exactly
    assert torch.equal(c.data, torch.tensor([0.5, -0.02, 0.03]))


def test_zero_fraction_by_hand():
    ps = [torch.tensor([0.0, 1.0, -0.0]), torch.zeros(2, 2), torch.tensor([3.0])]
    assert zero_fraction(ps).item() == pytest.approx(6 / 8)
    assert zero_fraction([]).item() == 0.0


# --- the mixin and the callback in real fits ----------------------------------------------------------


def _data(n=32):
    return classification_loader(n, 8, shape=(6,), classes=3, seed=0)


def _trainer(max_epochs=2, **kw):
    return fast_trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, deterministic=True, **kw)


class _PenNet(PenaltyMixin, L.LightningModule):
    def __init__(self, penalty: WeightPenalty | None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
        self.weight_penalty = penalty

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        if self.weight_penalty is not None and not self.weight_penalty.automatic:
            loss = loss + self.penalty()
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def _plain_reference(l1, l2, accumulate=1, epochs=2):
    """Plain PyTorch loop: the penalty added to each micro-batch loss divided by the accumulation."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    decayed = [net[0].weight, net[3].weight]
    for _ in range(epochs):
        for i, (x, y) in enumerate(_data()):
            loss = nn.functional.cross_entropy(net(x), y)
            loss = (
                loss + l1 * sum(w.abs().sum() for w in decayed) + l2 / 2 * sum((w * w).sum() for w in decayed)
            )
            (loss / accumulate).backward()
            if (i + 1) % accumulate == 0:
                opt.step()
                opt.zero_grad()
    return net


@pytest.mark.parametrize("automatic", [True, False])
def test_penalty_mixin_matches_plain_loop_with_accumulation(automatic):
    model = _PenNet(WeightPenalty(l1=0.01, l2=0.05, automatic=automatic))
    trainer = _trainer(accumulate_grad_batches=2, log_every_n_steps=1)
    trainer.fit(model, _data())
    ref = _plain_reference(0.01, 0.05, accumulate=2)
    for (name, a), b in zip(model.net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    assert "penalty/value" in trainer.callback_metrics
    with torch.no_grad():
        want = 0.01 * sum(w.abs().sum() for w in (ref[0].weight, ref[3].weight))
        want += 0.025 * sum((w * w).sum() for w in (ref[0].weight, ref[3].weight))
    # logged before the last optimizer step: close to, not equal to, the final value
    assert trainer.callback_metrics["penalty/value"].item() == pytest.approx(want.item(), rel=0.05)


class _TwoOptNet(PenaltyMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)
        self.weight_penalty = WeightPenalty(l1=0.01, l2=0.1)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_a, opt_b = self.optimizers()
        loss = nn.functional.cross_entropy(self.b(torch.relu(self.a(x))), y)
        opt_a.zero_grad()
        opt_b.zero_grad()
        self.manual_backward(loss)
        opt_a.step()
        opt_b.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.2), torch.optim.SGD(self.b.parameters(), lr=0.1)


def test_penalty_mixin_two_optimizers_penalise_each_parameter_once():
    model = _TwoOptNet()
    _trainer(max_epochs=1).fit(model, _data())
    torch.manual_seed(0)
    a, b = nn.Linear(6, 8), nn.Linear(8, 3)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.2), torch.optim.SGD(b.parameters(), lr=0.1)
    for x, y in _data():
        loss = nn.functional.cross_entropy(b(torch.relu(a(x))), y)
        loss = loss + sum(0.01 * w.abs().sum() + 0.05 * (w * w).sum() for w in (a.weight, b.weight))
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss.backward()
        opt_a.step()
        opt_b.step()
    for mine, ref in ((model.a, a), (model.b, b)):
        torch.testing.assert_close(mine.weight, ref.weight)
        torch.testing.assert_close(mine.bias, ref.bias)


def test_penalty_mixin_follows_regularized_module_exclusions():
    class Net(RegularizedModule):  # RegularizedModule includes PenaltyMixin
        def __init__(self):
            super().__init__(decay_rule=DecayRule(bias=False), weight_decay=0.0)
            self.lin = nn.Linear(2, 2)
            self.norm = nn.LayerNorm(2)
            self.weight_penalty = WeightPenalty(l2=1.0, automatic=False)

    net = Net()
    assert {id(p) for p in net.penalty_parameters()} == {id(net.lin.weight), id(net.lin.bias)}
    torch.testing.assert_close(net.penalty(), 0.5 * (net.lin.weight.pow(2).sum() + net.lin.bias.pow(2).sum()))
    net2 = Net()
    net2.weight_penalty = WeightPenalty(l2=1.0, rule=DecayRule(bias=True))  # explicit beats the module's
    assert [id(p) for p in net2.penalty_parameters()] == [id(net2.lin.weight)]


class _ProxNet(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.steps = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(
            [
                {"params": [self.net[0].weight, self.net[0].bias], "lr": 0.3},
                {"params": self.net[2].parameters()},
            ],
            lr=0.1,
        )
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}


def test_proximal_l1_callback_vs_plain_loop():
    l1, accumulate, epochs = 0.4, 2, 3
    model = _ProxNet()
    cb = ProximalL1(l1=l1)
    trainer = _trainer(
        max_epochs=epochs, accumulate_grad_batches=accumulate, log_every_n_steps=1, callbacks=[cb]
    )
    trainer.fit(model, _data())
    # plain PyTorch reference: step, then textbook soft-thresholding of the weights (not the biases)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(
        [{"params": [net[0].weight, net[0].bias], "lr": 0.3}, {"params": net[2].parameters()}], lr=0.1
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    for _ in range(epochs):
        for i, (x, y) in enumerate(_data()):
            (nn.functional.cross_entropy(net(x), y) / accumulate).backward()
            if (i + 1) % accumulate == 0:
                opt.step()
                opt.zero_grad()
                with torch.no_grad():
                    for group in opt.param_groups:
                        w = group["params"][0]  # the weight of each group
                        w.copy_(torch.sign(w) * torch.clamp(w.abs() - group["lr"] * l1, min=0))
        sched.step()
    for a, b in zip(model.net.parameters(), net.parameters()):
        torch.testing.assert_close(a, b)
    w0, w2 = model.net[0].weight, model.net[2].weight
    n_zero = int((w0 == 0).sum() + (w2 == 0).sum())
    assert n_zero > 0 and int((model.net[0].bias == 0).sum()) == 0
    assert trainer.callback_metrics["proximal_l1/zero_fraction"].item() == pytest.approx(
        n_zero / (w0.numel() + w2.numel())
    )
    assert trainer.global_step == epochs * 4 // accumulate
    assert cb._handles == []  # hooks removed after fit
    with pytest.raises(ValueError, match=r"`l1` must be a finite number > 0; got 0"):
        ProximalL1(l1=0)


def test_hot_paths_do_not_sync():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    params = decayed_parameters(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 6)).sum().backward()
    with SyncCounter() as counter:
        value = elastic_net_penalty(params, 0.01, 0.1)
        value.backward()
        add_penalty_grad_(params, 0.01, 0.1)
        proximal_l1_(opt, 0.1, params)
        zero_fraction(params)
    assert counter.syncs == []
    with SyncCounter() as counter:  # the reference per-element check does sync: the counter works
        bool((params[0] == 0).any())
    assert counter.syncs


@pytest.mark.parametrize("every", [None, 0, 3])
def test_penalty_and_proximal_keys_follow_lightnings_logging_rule(every):
    """Both keys land on Lightning's own logging rows ((step + 1) % n == 0; None = Trainer's interval,
    0 = off), not on `global_step % n == 0` as before, and are monitorable."""
    from tests.memory_logger import MemoryLogger

    class Logged(_PenNet):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss, on_step=True)  # Lightning's own step metric: the reference rows
            return loss

    logger = MemoryLogger()
    model = Logged(WeightPenalty(l2=0.01, log_every_n_steps=every))
    trainer = fast_trainer(
        max_epochs=2, logger=logger, log_every_n_steps=2, accelerator="cpu",
        callbacks=[ProximalL1(l1=0.01, log_every_n_steps=every, verbose=0)],
    )
    trainer.fit(model, _data())  # 8 optimizer steps
    rows = {}
    for step, metrics in logger.calls:
        for key in metrics:
            rows.setdefault(key, []).append(step)
    n = 2 if every is None else every
    expected = [s for s in range(8) if n and (s + 1) % n == 0]
    assert rows.get("penalty/value", []) == expected
    assert rows.get("proximal_l1/zero_fraction", []) == expected
    if every is None:
        assert rows["train_loss"] == expected  # the same rows as Lightning's own
    if expected:
        assert {"penalty/value", "proximal_l1/zero_fraction"} <= set(trainer.callback_metrics)


def test_proximal_l1_verbose_and_rule_from_the_module(caplog):
    import logging

    class Module(RegularizedModule):
        def __init__(self):
            super().__init__(decay_rule=DecayRule(exclude=["net.2"]), lr=0.1)
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

    cb = ProximalL1(l1=0.1)
    with caplog.at_level(logging.INFO):
        _trainer(max_epochs=1, callbacks=[cb]).fit(Module(), _data())
    assert cb._params and all(p.shape == (16, 6) for p in cb._params)  # net.2 excluded by the module's rule
    assert "ProximalL1: l1=0.1 on 1 tensors (96 weights)." in caplog.text
