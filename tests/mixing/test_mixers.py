from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms.v2 import CutMix, MixUp

from lightning_reg import BatchMixer, BatchMixingMixin, cutmix, mixup
from lightning_reg.mixing import soft_target_cross_entropy
from lightning_reg.mixing.mixers import MixParams, cutmix_box, soft_targets
from tests.helpers import SyncCounter, fast_trainer


def _tv_transform(tv, inpt, params):
    """torchvision's per-input transform step: ``transform`` from torchvision 0.21, ``_transform`` before."""
    step = getattr(tv, "transform", None) or tv._transform
    return step(inpt, params)


def test_soft_targets_by_hand():
    y = torch.tensor([2, 0])
    got = soft_targets(y, 4, label_smoothing=0.2)
    # eps / K = 0.05 everywhere, plus 1 - eps = 0.8 on the true class
    want = torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]])
    torch.testing.assert_close(got, want)
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(
        soft_targets(probs, 4, label_smoothing=0.2), torch.tensor([[0.45, 0.45, 0.05, 0.05]])
    )
    assert torch.equal(soft_targets(y, 4), F.one_hot(y, 4).float())
    with pytest.raises(ValueError, match="neither class indices"):
        soft_targets(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match=r"`label_smoothing` must be a number in \[0, 1\); got 1\.0"):
        soft_targets(y, 4, label_smoothing=1.0)


def test_soft_target_cross_entropy_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    # smoothed one-hot targets reproduce torch's label_smoothing cross entropy
    for eps in (0.0, 0.1):
        torch.testing.assert_close(
            soft_target_cross_entropy(logits, soft_targets(y, 5, label_smoothing=eps)),
            F.cross_entropy(logits, y, label_smoothing=eps),
        )
    probs = torch.softmax(torch.randn(6, 5), dim=1)
    torch.testing.assert_close(
        soft_target_cross_entropy(logits, probs, reduction="none"),
        F.cross_entropy(logits, probs, reduction="none"),
    )
    # hand formula for one row
    row = -(probs[0] * (logits[0] - torch.logsumexp(logits[0], 0))).sum()
    torch.testing.assert_close(
        soft_target_cross_entropy(logits, probs, reduction="sum"),
        F.cross_entropy(logits, probs, reduction="sum"),
    )
    torch.testing.assert_close(soft_target_cross_entropy(logits[:1], probs[:1]), row)
    # index targets fall back to cross entropy with the smoothing
    torch.testing.assert_close(
        soft_target_cross_entropy(logits, y, label_smoothing=0.1),
        F.cross_entropy(logits, y, label_smoothing=0.1),
    )
    with pytest.raises(ValueError, match="`reduction` must be one of 'mean', 'sum', 'none'; got 'avg'"):
        soft_target_cross_entropy(logits, probs, reduction="avg")


def test_mixup_fixed_lambda_vs_hand_and_torchvision():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6)
    y = torch.tensor([0, 1, 2, 1])
    lam = 0.3
    got = mixup(x, lam)
    for i in range(4):  # sample i is mixed with sample i - 1 (sample 0 with the last one)
        torch.testing.assert_close(got[i], lam * x[i] + (1 - lam) * x[i - 1])
    assert not torch.equal(got, x)  # and x itself is untouched
    params = {"lam": lam, "labels": y, "batch_size": 4}
    tv = MixUp(alpha=1.0, num_classes=3)
    torch.testing.assert_close(got, _tv_transform(tv, x, params))
    torch.testing.assert_close(mixup(soft_targets(y, 3), lam), _tv_transform(tv, y, params))
    # any shape: tabular batches too (torchvision's MixUp rejects them)
    t = torch.tensor([[1.0, 2.0], [5.0, 6.0]])
    torch.testing.assert_close(mixup(t, 0.25), torch.tensor([[4.0, 5.0], [2.0, 3.0]]))
    with pytest.raises(TypeError, match="uint8"):
        mixup(torch.zeros(2, 3, dtype=torch.uint8), 0.5)


def test_cutmix_box_by_hand():
    # lam = 0.64: side fraction sqrt(0.36) = 0.6; H = 10 -> half int(3.0) = 3; W = 20 -> half int(6.0) = 6
    box, lam_adj = cutmix_box(0.64, (10, 20), (5, 10))
    assert box == (slice(2, 8), slice(4, 16))
    assert lam_adj == pytest.approx(1 - (6 * 12) / 200)
    # clipped at the border: centre (0, 19)
    box, lam_adj = cutmix_box(0.64, (10, 20), (0, 19))
    assert box == (slice(0, 3), slice(13, 20))
    assert lam_adj == pytest.approx(1 - (3 * 7) / 200)
    # 1-D: segment of about (1 - lam) * L: L = 40, lam = 0.75 -> half int(0.5 * 0.25 * 40) = 5
    box, lam_adj = cutmix_box(0.75, (40,), (10,))
    assert box == (slice(5, 15),)
    assert lam_adj == pytest.approx(0.75)
    assert cutmix_box(1.0, (8, 8), (3, 3))[1] == 1.0  # lam 1 -> empty box


def test_cutmix_vs_hand_and_torchvision():
    torch.manual_seed(1)
    x = torch.randn(3, 2, 8, 8)
    y = torch.tensor([0, 1, 2])
    box, lam_adj = cutmix_box(0.5, (8, 8), (3, 5))
    got = cutmix(x, box)
    want = x.clone()
    for i in range(3):
        want[i, :, box[0], box[1]] = x[i - 1, :, box[0], box[1]]
    assert torch.equal(got, want)
    tv_box = (box[1].start, box[0].start, box[1].stop, box[0].stop)  # torchvision: (x1, y1, x2, y2)
    params = {"box": tv_box, "lam_adjusted": lam_adj, "labels": y, "batch_size": 3}
    tv = CutMix(alpha=1.0, num_classes=3)
    assert torch.equal(got, _tv_transform(tv, x, params))
    torch.testing.assert_close(mixup(soft_targets(y, 3), lam_adj), _tv_transform(tv, y, params))
    # 1-D sequences: (B, C, L)
    s = torch.arange(12.0).reshape(2, 1, 6)
    assert torch.equal(
        cutmix(s, (slice(2, 4),)), torch.tensor([[[0, 1, 8, 9, 4, 5.0]], [[6, 7, 2, 3, 10, 11.0]]])
    )


def test_batch_mixer_decisions():
    x = torch.randn(4, 1, 6, 6)
    y = torch.tensor([0, 1, 2, 3])
    only_cut = BatchMixer(4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0, seed=0)
    only_mix = BatchMixer(4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.0, seed=0)
    never = BatchMixer(4, mixup_alpha=1.0, prob=0.0, label_smoothing=0.1, seed=0)
    for _ in range(5):
        xc, yc = only_cut(x, y)
        assert only_cut.last.kind == "cutmix"
        assert torch.equal(xc, cutmix(x, only_cut.last.box))
        torch.testing.assert_close(yc, mixup(soft_targets(y, 4), only_cut.last.lam))
        xm, ym = only_mix(x, y)
        assert only_mix.last.kind == "mixup"
        torch.testing.assert_close(xm, mixup(x, only_mix.last.lam))
        xn, yn = never(x, y)
        assert xn is x and never.last == MixParams("none", 1.0)
        torch.testing.assert_close(yn, soft_targets(y, 4, label_smoothing=0.1))
    # about half of the batches mixed with prob=0.5
    half = BatchMixer(4, mixup_alpha=1.0, prob=0.5, seed=3)
    kinds = [half.sample(x).kind for _ in range(400)]
    assert 150 < kinds.count("mixup") < 250
    # off from stop_epoch on, smoothing stays
    late = BatchMixer(4, mixup_alpha=1.0, stop_epoch=2, label_smoothing=0.1, seed=0)
    assert late.sample(x, epoch=1).kind == "mixup"
    assert late.sample(x, epoch=2).kind == "none"
    # tabular inputs cannot be cut
    with pytest.raises(ValueError, match="CutMix needs"):
        BatchMixer(4, mixup_alpha=0.0, cutmix_alpha=1.0)(torch.randn(4, 3), y)


def test_batch_mixer_lambda_distribution_and_state():
    mixer = BatchMixer(3, mixup_alpha=0.4, seed=7)
    lams = torch.tensor([mixer.sample(torch.zeros(2, 2)).lam for _ in range(2000)])
    # Beta(0.4, 0.4): mean 0.5, variance a^2 / ((2a)^2 (2a + 1)) = 1 / (4 * 1.8)
    assert lams.mean().item() == pytest.approx(0.5, abs=0.03)
    assert lams.var().item() == pytest.approx(1 / 7.2, abs=0.015)
    state = mixer.state_dict()
    restored = BatchMixer(3, mixup_alpha=0.4, seed=123)
    restored.load_state_dict(state)
    assert [mixer.sample(torch.zeros(2, 2)) for _ in range(5)] == [
        restored.sample(torch.zeros(2, 2)) for _ in range(5)
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, r"`num_classes` must be an int >= 2; got 1\."),
        ({"num_classes": 3, "mixup_alpha": -1.0}, r"`mixup_alpha` must be a finite number >= 0; got -1\.0"),
        ({"num_classes": 3, "prob": 1.5}, r"`prob` must be a number in \[0, 1\]; got 1\.5"),
        ({"num_classes": 3, "switch_prob": -0.1}, r"`switch_prob` must be a number in \[0, 1\]; got -0\.1"),
        ({"num_classes": 3, "label_smoothing": 1.0}, r"`label_smoothing` must be a number in \[0, 1\); got"),
        ({"num_classes": 3, "stop_epoch": -1}, r"`stop_epoch` must be an int >= 0 or None; got -1"),
    ],
)
def test_batch_mixer_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchMixer(**kwargs)


class _Net(BatchMixingMixin, L.LightningModule):
    def __init__(self, mixer: BatchMixer | None):
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 4 * 4, 3))
        self.batch_mixer = mixer
        self.seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(("train", x.clone(), y.clone()))
        return self.mixing_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(("val", x.clone(), y.clone()))
        self.log("val_loss", self.mixing_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data():
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g))
    return DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=8)


def _trainer(tmp_path, max_epochs, **kw):
    kw.setdefault("enable_checkpointing", True)
    return fast_trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, default_root_dir=tmp_path, deterministic=True,
        **kw,
    )


def test_mixin_mixes_training_batches_only(tmp_path):
    train, val = _data()
    mixer = BatchMixer(3, mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.1, stop_epoch=1, seed=0)
    net = _Net(mixer)
    _trainer(tmp_path, 2, enable_checkpointing=False).fit(net, train, val)
    ref = BatchMixer(3, mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.1, stop_epoch=1, seed=0)
    raw = list(train)
    train_seen = [s for s in net.seen if s[0] == "train"]
    assert len(train_seen) == 8
    kinds = set()
    for i, (_, x, y) in enumerate(train_seen):
        epoch = i // 4
        params = ref.sample(raw[i % 4][0], epoch)
        kinds.add(params.kind)
        want_x, want_y = ref.apply(raw[i % 4][0], raw[i % 4][1], params)
        assert torch.equal(x, want_x) and torch.equal(y, want_y)
        if epoch == 1:  # off after stop_epoch: inputs untouched, targets smoothed
            assert params.kind == "none" and torch.equal(x, raw[i % 4][0])
    assert {"mixup", "cutmix"} <= kinds
    for _, x, y in (s for s in net.seen if s[0] == "val"):
        assert y.dtype == torch.long and x.shape == (8, 1, 4, 4)  # validation batches untouched


def test_a_closure_evaluated_several_times_sees_one_mixed_batch(tmp_path):
    """LBFGS evaluates the closure (training_step included) several times per batch: each evaluation must
    see the same mixed batch, and the mixer draws once per batch, as an optimizer stepping once would."""

    class LBFGSNet(_Net):
        def training_step(self, batch, batch_idx):
            self.seen_idx.append(batch_idx)
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)

    train, _ = _data()
    net = LBFGSNet(BatchMixer(3, mixup_alpha=1.0, cutmix_alpha=1.0, seed=0))
    net.seen_idx = []
    _trainer(tmp_path, 1, enable_checkpointing=False).fit(net, train)
    ref = BatchMixer(3, mixup_alpha=1.0, cutmix_alpha=1.0, seed=0)
    raw = list(train)
    wanted = [ref.apply(x, y, ref.sample(x, 0)) for x, y in raw]
    assert len(net.seen) > len(raw) and sorted(set(net.seen_idx)) == [0, 1, 2, 3]  # re-evaluated
    for i, (_, x, y) in zip(net.seen_idx, net.seen):
        assert torch.equal(x, wanted[i][0]) and torch.equal(y, wanted[i][1]), i
    assert net.batch_mixer.state_dict() == ref.state_dict()  # one draw per batch


def test_mix_batch_structures():
    from collections import namedtuple

    Batch = namedtuple("Batch", ["x", "y", "meta"])
    mixer = BatchMixer(2, mixup_alpha=0.0, label_smoothing=0.2)
    out = BatchMixingMixin().mix_batch(Batch(torch.ones(2, 3), torch.tensor([0, 1]), "m"), mixer)
    assert isinstance(out, Batch) and out.meta == "m" and out.y.shape == (2, 2)
    out = BatchMixingMixin().mix_batch([torch.ones(2, 3), torch.tensor([0, 1])], mixer)
    assert isinstance(out, list)
    with pytest.raises(TypeError, match="override mix_batch"):
        BatchMixingMixin().mix_batch({"x": torch.ones(2, 3)}, mixer)


class _ShuffledNet(_Net):
    def on_train_epoch_start(self):
        torch.manual_seed(100 + self.current_epoch)


def test_mixin_resume_matches_uninterrupted(tmp_path):
    def make():
        L.seed_everything(0)
        return _ShuffledNet(BatchMixer(3, mixup_alpha=0.5, cutmix_alpha=1.0, prob=0.7, seed=5))

    train, _ = _data()
    full = make()
    _trainer(tmp_path / "full", 3, enable_checkpointing=False).fit(full, train)

    first = make()
    t1 = _trainer(tmp_path / "part", 2, enable_checkpointing=False)
    t1.fit(first, train)
    ckpt = tmp_path / "part.ckpt"
    t1.save_checkpoint(ckpt)
    resumed = make()
    resumed.batch_mixer = BatchMixer(3, mixup_alpha=0.5, cutmix_alpha=1.0, prob=0.7, seed=999)  # overwritten
    _trainer(tmp_path / "part", 3, enable_checkpointing=False).fit(resumed, train, ckpt_path=ckpt)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    # and the mixing decisions of the last epoch were the same
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full.seen[-4:], resumed.seen[-4:]))


def test_mixing_does_not_sync():
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    mixer = BatchMixer(4, mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.1, seed=0)
    logits = torch.randn(8, 4)
    with SyncCounter() as counter:
        for _ in range(6):
            xm, ym = mixer(x, y)
            soft_target_cross_entropy(logits, ym)
    assert counter.syncs == []


def test_labels_outside_num_classes_are_a_clear_error_not_an_index_error():
    mixer = BatchMixer(num_classes=5, mixup_alpha=0.4, seed=0)
    with pytest.raises(RuntimeError, match=r"class indices must be in \[0, num_classes=5\).*num_classes"):
        mixer(torch.randn(4, 3), torch.tensor([0, 4, 9, 1]))
    with pytest.raises(RuntimeError, match=r"class indices must be in \[0, num_classes=5\)"):
        soft_targets(torch.tensor([-1, 2]), 5)
    assert soft_targets(torch.tensor([0, 4]), 5).argmax(1).tolist() == [0, 4]  # the edges are valid


def test_num_classes_other_than_the_model_outputs_is_named():
    """A preset built with num_classes=12 on a model with 10 outputs: a raw broadcast error before."""
    from lightning_reg import RegularizedModule

    class Ten(RegularizedModule):
        def __init__(self):
            super().__init__(preset="medium", num_classes=12, verbose=0)
            self.head = torch.nn.Linear(4, 10)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.mixing_loss(self.head(x), y)

    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 10, (8,))), batch_size=4)
    trainer = fast_trainer(max_steps=1)
    with pytest.raises(
        ValueError, match=r"logits have 10 classes .*targets 12 .*num_classes=12.*outputs, 10"
    ):
        trainer.fit(Ten(), data)
