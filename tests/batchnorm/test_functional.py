from __future__ import annotations

import copy
import io
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18
from torchvision.ops import FrozenBatchNorm2d

from lightning_reg.batchnorm.callback import FreezeBatchNorm
from lightning_reg.batchnorm.functional import (
    batchnorm_layers,
    freeze_batchnorm,
    frozen_batchnorm_parameters,
    is_frozen_batchnorm,
    unfreeze_batchnorm,
)
from tests.distributed.launch import run_ddp_script
from tests.helpers import BatchNormRecorder, conv_bn_net, fast_trainer


def _convnet() -> nn.Sequential:
    net = conv_bn_net()
    net.train()
    for _ in range(3):  # give the running statistics non-trivial values
        net(torch.randn(8, 2, 4, 4) * 3 + 1)
    return net


def test_frozen_outputs_identical_across_train_and_eval_and_match_reference():
    net = _convnet()
    bn = net[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    assert freeze_batchnorm(net) == [bn]
    x = torch.randn(5, 2, 4, 4)
    net.train()
    assert net.training and net[0].training and not bn.training
    out_train = net(x)
    net.eval()
    out_eval = net(x)
    assert torch.equal(out_train, out_eval)
    # statistics untouched by the train-mode forward
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    # independent reference: torchvision's FrozenBatchNorm2d with the same statistics and affine parameters
    ref = FrozenBatchNorm2d(4, eps=bn.eps)
    ref.weight.copy_(bn.weight.detach())
    ref.bias.copy_(bn.bias.detach())
    ref.running_mean.copy_(stats[0])
    ref.running_var.copy_(stats[1])
    h = net[0](x)
    torch.testing.assert_close(bn(h), ref(h))
    # and the formula by hand
    want = (h - stats[0][:, None, None]) / torch.sqrt(stats[1][:, None, None] + bn.eps)
    want = want * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(bn(h), want)
    # affine frozen, gradients still flow through the layer
    assert not bn.weight.requires_grad and not bn.bias.requires_grad
    x.requires_grad_(True)
    net(x).sum().backward()
    assert bn.weight.grad is None and x.grad is not None and net[0].weight.grad is not None


def test_direct_training_assignment_is_undone_by_the_hook():
    net = _convnet()
    bn = net[1]
    freeze_batchnorm(net)
    mean = bn.running_mean.clone()
    bn.training = True  # what Lightning's _ModuleMode.restore does
    net(torch.randn(4, 2, 4, 4) + 5)
    assert not bn.training and torch.equal(bn.running_mean, mean)


def test_unfreeze_restores_everything():
    net = _convnet()
    bn = net[1]
    bn.bias.requires_grad_(False)  # a user choice the round trip must keep
    freeze_batchnorm(net)
    assert freeze_batchnorm(net) == []  # idempotent
    assert unfreeze_batchnorm(net) == [bn]
    assert not is_frozen_batchnorm(bn) and "train" not in bn.__dict__ and len(bn._forward_pre_hooks) == 0
    assert bn.training and bn.weight.requires_grad and not bn.bias.requires_grad
    mean = bn.running_mean.clone()
    net(torch.randn(4, 2, 4, 4) + 5)
    assert not torch.equal(bn.running_mean, mean)  # statistics update again
    net.eval()
    assert not bn.training
    net.train()
    assert bn.training


def test_affine_false_keeps_requires_grad():
    net = _convnet()
    freeze_batchnorm(net, affine=False)
    assert net[1].weight.requires_grad
    assert frozen_batchnorm_parameters(net) == [net[1].weight, net[1].bias]
    net.train()
    assert not net[1].training


def test_copy_and_pickle_keep_the_freeze():
    net = _convnet()
    freeze_batchnorm(net)
    for clone in (copy.deepcopy(net), _roundtrip(net)):
        clone.train()
        assert is_frozen_batchnorm(clone[1]) and not clone[1].training
        assert clone[1].train.args[0] is clone[1]  # bound to the copy, not the original
        x = torch.randn(3, 2, 4, 4)
        assert torch.equal(clone(x), net.eval()(x))
    assert list(net.state_dict()) == list(_convnet().state_dict())  # state_dict keys unchanged


def _roundtrip(module: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_torchvision_resnet_all_layers():
    model = resnet18(num_classes=4)
    n = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(freeze_batchnorm(model)) == n == len(batchnorm_layers(model)) == 20
    model.train()
    x = torch.randn(2, 3, 32, 32)
    a = model(x)
    model.eval()
    assert torch.equal(a, model(x))


# --- the callback in a real fit -----------------------------------------------------------------------


class _Net(BatchNormRecorder):
    def __init__(self):
        super().__init__(_convnet())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))


def _loader():
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(24, 2, 4, 4, generator=g) * 2 + 1, torch.randint(0, 3, (24,), generator=g))
    return DataLoader(ds, batch_size=8)


def _fit(tmp_path, max_epochs, ckpt_path=None, **kw):
    L.seed_everything(0)
    model = _Net()
    trainer = fast_trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        default_root_dir=tmp_path,
        callbacks=[FreezeBatchNorm(epoch=1)],
        **kw,
    )
    trainer.fit(model, _loader(), _loader(), ckpt_path=ckpt_path)
    return model, trainer


def test_callback_no_update_after_freezing_in_real_fit(tmp_path):
    model, _ = _fit(tmp_path, 3)
    s0, s2 = model.snapshots[0], model.snapshots[2]
    bn_keys = [k for k in s0 if k.startswith("net.1.")]
    assert len(bn_keys) == 5  # weight, bias, running_mean, running_var, num_batches_tracked
    for k in bn_keys:  # frozen from epoch 1 on: identical to the end of epoch 0
        assert torch.equal(s0[k], s2[k]), k
    for k in ("net.0.weight", "net.4.weight"):  # the rest keeps training
        assert not torch.equal(s0[k], s2[k])
    # epoch 0 trained in train mode, epochs 1-2 (after validation and model.train()) in eval mode
    assert model.bn_training == [True] * 3 + [False] * 6
    assert not model.net[1].weight.requires_grad


def test_callback_resume_matches_uninterrupted(tmp_path):
    full, _ = _fit(tmp_path / "full", 3)
    _, part = _fit(tmp_path / "part", 2)
    ckpt = tmp_path / "part.ckpt"
    part.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    assert state[FreezeBatchNorm(epoch=1).state_key] == {"epoch": 1, "frozen": True}
    resumed, _ = _fit(tmp_path / "part", 3, ckpt_path=ckpt)
    assert resumed.bn_training == [False] * 3  # re-frozen on resume
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_callback_modules_restricts_the_freeze():
    model = _Parts()
    _bn_fit(model, FreezeBatchNorm(modules=["backbone"]))
    assert is_frozen_batchnorm(model.backbone[1]) and not is_frozen_batchnorm(model.head[1])
    assert model.head[1].num_batches_tracked.item() == 2 and model.backbone[1].num_batches_tracked.item() == 0


def test_callback_validation():
    with pytest.raises(ValueError, match=r"`epoch` must be an int >= 0; got -1"):
        FreezeBatchNorm(epoch=-1)
    with pytest.raises(TypeError, match=r"`modules` must be a list of str.*\['backbone'\]"):
        FreezeBatchNorm(modules="backbone")
    assert FreezeBatchNorm(epoch=1).state_key != FreezeBatchNorm(epoch=2).state_key


def _run_ddp(tmp_path, scenario):
    script = Path(__file__).parents[1] / "distributed" / "freeze_batchnorm_ddp.py"
    run_ddp_script(script, tmp_path, scenario, timeout=200)
    return [torch.load(tmp_path / f"{scenario}_rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_callback_ddp_plain_batchnorm(tmp_path):
    # broadcast_buffers=False: each rank has its own running statistics until the freeze broadcasts rank 0's
    r0, r1 = _run_ddp(tmp_path, "bn")
    assert not torch.equal(r0["epoch0"]["net.1.running_mean"], r1["epoch0"]["net.1.running_mean"])
    for k in r0["final"]:  # identical on both ranks at the end
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    bn_keys = [k for k in r0["final"] if k.startswith("net.1.")]
    assert len(bn_keys) == 5
    for k in bn_keys:  # frozen at epoch 1: nothing moved after the end of epoch 0 (rank 0's statistics)
        assert torch.equal(r0["epoch0"][k], r0["final"][k]), k
    assert not torch.equal(r0["epoch0"]["net.0.weight"], r0["final"]["net.0.weight"])
    for r in (r0, r1):  # 24 samples per rank, batches of 8: 3 steps per epoch
        assert r["bn_training"] == [True] * 3 + [False] * 6
        assert r["bn_type"] == "BatchNorm2d"
    # ProximalL1 ran on both ranks alike: exact zeros in the conv and linear weights (not in BN or biases)
    weights = [r0["final"]["net.0.weight"], r0["final"]["net.4.weight"]]
    n_zero = sum(int((w == 0).sum()) for w in weights)
    assert n_zero > 0 and int((r0["final"]["net.0.bias"] == 0).sum()) == 0
    assert (
        r0["zero_fraction"] == r1["zero_fraction"] == pytest.approx(n_zero / sum(w.numel() for w in weights))
    )


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm under DDP needs 2 CUDA devices")
@pytest.mark.timeout(240)
def test_callback_ddp_sync_batchnorm(tmp_path):
    r0, r1 = _run_ddp(tmp_path, "syncbn")
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    for r in (r0, r1):
        assert r["bn_type"] == "SyncBatchNorm"
        assert r["bn_training"] == [True] * 3 + [False] * 6
        for k in (k for k in r["final"] if k.startswith("net.1.")):
            assert torch.equal(r0["epoch0"][k], r["final"][k]), k
        assert not torch.equal(r["epoch0"]["net.0.weight"], r["final"]["net.0.weight"])


def test_children_of_a_frozen_layer_follow_train_and_eval():
    # add_stochastic_depth puts each DropPath inside the BatchNorm that ends the residual branch
    # (layer1[0].bn2.drop_path): freezing the norm must not pin its children's mode.
    from lightning_reg.stochastic_depth.layers import add_stochastic_depth

    torch.manual_seed(0)
    m = resnet18(num_classes=10)
    add_stochastic_depth(m, 0.5)
    m.train()
    freeze_batchnorm(m)
    m.eval()
    drop_paths = [mod for name, mod in m.named_modules() if name.endswith("drop_path")]
    assert len(drop_paths) == 8
    assert not any(d.training for d in drop_paths)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))  # eval: deterministic
    m.train()
    assert all(d.training for d in drop_paths)  # training: DropPath active again, the norms stay frozen
    assert not any(bn.training for bn in batchnorm_layers(m))
    # a direct ``training = True`` on the norm (Lightning's _ModuleMode.restore) leaves its children alone
    bn = m.layer1[0].bn2
    m.eval()
    bn.training = True
    with torch.no_grad():
        m(x)
    assert not bn.training and not bn.drop_path.training


def _bn_fit(model, callback, caplog=None):
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    trainer = fast_trainer(max_epochs=1, callbacks=[callback])
    trainer.fit(model, data)
    return trainer


class _Parts(L.LightningModule):
    def __init__(self, bn: bool = True):
        super().__init__()
        norm = nn.BatchNorm1d if bn else nn.LayerNorm
        self.backbone = nn.Sequential(nn.Linear(4, 4), norm(4))
        self.head = nn.Sequential(nn.Linear(4, 4), norm(4), nn.Linear(4, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_refuses_a_model_or_selection_without_batchnorm():
    with pytest.raises(ValueError, match=r"_Parts has no BatchNorm layer .*nothing to freeze"):
        _bn_fit(_Parts(bn=False), FreezeBatchNorm())
    with pytest.raises(ValueError, match=r"`modules` pattern\(s\) \['neck'\] select no module"):
        _bn_fit(_Parts(), FreezeBatchNorm(modules=["neck"]))
    with pytest.raises(ValueError, match=r"has no BatchNorm layer under `modules`=\['backbone.0'\]"):
        _bn_fit(_Parts(), FreezeBatchNorm(modules=["backbone.0"]))


def test_callback_modules_take_the_selector_syntax_and_verbose(caplog):
    import logging

    for patterns in (["head.*"], ["re:^head\\."], ["head.1"]):
        model = _Parts()
        with caplog.at_level(logging.INFO):
            _bn_fit(model, FreezeBatchNorm(modules=patterns, verbose=2))
        assert is_frozen_batchnorm(model.head[1]) and not is_frozen_batchnorm(model.backbone[1]), patterns
    assert "FreezeBatchNorm: froze 1 BatchNorm layers at epoch 0." in caplog.text
    assert "FreezeBatchNorm: head.1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _bn_fit(_Parts(), FreezeBatchNorm(verbose=0))
    assert "FreezeBatchNorm" not in caplog.text


def test_callback_keeps_frozen_statistics_through_stochastic_weight_averaging(tmp_path):
    """SWA resets every BatchNorm to zeros / ones and recomputes the statistics in train mode; frozen
    layers stay in eval mode, so they ended with zeros and ones."""
    from lightning.pytorch.callbacks import Callback, StochasticWeightAveraging

    class AtFreeze(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                bn = pl_module.backbone[1]
                self.stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))

    torch.manual_seed(0)
    model = _Parts()
    at_freeze = AtFreeze()
    data = DataLoader(TensorDataset(torch.randn(16, 4) * 3 + 1, torch.randint(0, 2, (16,))), batch_size=8)
    trainer = fast_trainer(
        max_epochs=4,
        default_root_dir=tmp_path,
        callbacks=[FreezeBatchNorm(epoch=1, verbose=0), at_freeze, StochasticWeightAveraging(0.05, 2)],
    )
    trainer.fit(model, data)
    bn = model.backbone[1]
    assert not torch.equal(bn.running_mean, torch.zeros(4))
    assert torch.equal(bn.running_mean, at_freeze.stats[0])
    assert torch.equal(bn.running_var, at_freeze.stats[1])
    assert int(bn.num_batches_tracked) == at_freeze.stats[2] == 2  # epoch 0 only: 2 batches
