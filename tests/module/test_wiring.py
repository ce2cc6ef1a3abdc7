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


def test_no_mixer_means_no_hook_override_and_the_mixer_hook_survives_copy_and_pickle():
    import copy
    import pickle

    from lightning.pytorch.utilities.model_helpers import is_overridden

    plain = Net()
    # without a mixer the module does not override the shared data hook (no DataModule warning)
    assert not is_overridden("on_after_batch_transfer", plain)
    mixed = Net(batch_mixer=BatchMixer(num_classes=2, mixup_alpha=1.0, seed=0))
    assert is_overridden("on_after_batch_transfer", mixed)
    for clone in (copy.deepcopy(mixed), pickle.loads(pickle.dumps(mixed))):
        assert clone.on_after_batch_transfer.args[0] is clone
        assert clone.batch_mixer is not mixed.batch_mixer
    mixed.batch_mixer = None
    assert not is_overridden("on_after_batch_transfer", mixed)


def test_user_hook_runs_first_and_its_result_is_mixed():
    class Scaled(Net):
        def on_after_batch_transfer(self, batch, dataloader_idx):  # no super() call on purpose
            x, y = batch
            return x * 0 + 1.0, y

    net = Scaled(batch_mixer=BatchMixer(num_classes=2, mixup_alpha=1.0, seed=0))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(net, DataLoader(TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), batch_size=8))
    assert net.seen_targets[0].shape == (8, 2)  # soft targets: the user's hook ran, then mixing
