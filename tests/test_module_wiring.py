"""RegularizedModule carries the penalty and batch-mixing mixins (issue 9 wired into issue 2's mixin)."""

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import BatchMixer, RegularizedModule, WeightPenalty


class Net(RegularizedModule):
    def __init__(self, **kwargs):
        super().__init__(lr=0.1, weight_decay=0.0, **kwargs)
        self.lin = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.seen_targets = []

    def forward(self, x):
        return self.head(self.norm(self.lin(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen_targets.append(y.detach().clone())
        return self.mixing_loss(self(x), y)


def test_penalty_through_constructor_matches_hand_formula():
    torch.manual_seed(0)
    net = Net(weight_penalty=WeightPenalty(l1=0.01, l2=0.1, automatic=False))
    # independent classification: weights of the two Linear layers decay; biases and LayerNorm do not
    decayed = [net.lin.weight, net.head.weight]
    expected = 0.01 * sum(w.abs().sum() for w in decayed) + 0.1 / 2 * sum((w**2).sum() for w in decayed)
    torch.testing.assert_close(net.penalty(), expected)


def test_batch_mixer_through_constructor_mixes_training_batches_only():
    torch.manual_seed(0)
    net = Net(batch_mixer=BatchMixer(num_classes=2, mixup_alpha=1.0, seed=0))
    x = torch.randn(16, 3)
    y = torch.randint(0, 2, (16,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(net, loader)
    assert len(net.seen_targets) == 2
    for t in net.seen_targets:
        # soft targets: rows sum to one, and mixing made some of them non-one-hot
        assert t.shape == (8, 2)
        torch.testing.assert_close(t.sum(dim=1), torch.ones(8))
    assert any(((t > 0) & (t < 1)).any() for t in net.seen_targets)
