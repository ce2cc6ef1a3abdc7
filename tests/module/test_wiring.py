"""RegularizedModule carries the penalty and batch-mixing mixins and a preset's module side."""

import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import BatchMixer, RegularizedModule
from lightning_reg.penalties import WeightPenalty
from tests.helpers import fast_trainer


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
    trainer = fast_trainer(max_epochs=1)
    trainer.fit(net, loader)
    assert len(net.seen_targets) == 2
    for t in net.seen_targets:
        # soft targets: rows sum to one, and mixing made some of them non-one-hot
        assert t.shape == (8, 2)
        torch.testing.assert_close(t.sum(dim=1), torch.ones(8))
    assert any(((t > 0) & (t < 1)).any() for t in net.seen_targets)


def test_no_data_hook_is_overridden_and_the_mixing_step_survives_copy_and_pickle():
    import copy
    import inspect
    import pickle

    from lightning.pytorch.utilities.model_helpers import is_overridden

    plain = Net()
    mixed = Net(batch_mixer=BatchMixer(num_classes=2, mixup_alpha=1.0, seed=0))
    for net in (plain, mixed):  # with or without a mixer, the data hook shared with a DataModule is free
        assert not is_overridden("on_after_batch_transfer", net)
        assert is_overridden("training_step", net)
        assert list(inspect.signature(net.training_step).parameters) == ["batch", "batch_idx"]
    assert "training_step" in vars(mixed) and "training_step" not in vars(plain)
    for clone in (copy.deepcopy(mixed), pickle.loads(pickle.dumps(mixed))):
        assert clone.training_step.module is clone
        assert clone.batch_mixer is not mixed.batch_mixer
    mixed.batch_mixer = None
    assert "training_step" not in vars(mixed)


def test_a_datamodule_gets_no_hook_warning_and_its_batches_are_mixed():
    """A preset's mixer made every fit with a LightningDataModule warn that `on_after_batch_transfer` was
    overridden in the module; with a DataModule that has that hook, the batches were not mixed at all."""
    from lightning.pytorch.trainer.connectors import data_connector

    class Data(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.hook_calls = 0

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = TensorDataset(torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g))
            return DataLoader(data, batch_size=8)

    class DataWithHook(Data):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            self.hook_calls += 1
            x, y = batch
            return x * 0 + 1.0, y  # constant inputs: the targets alone show the mixing

    for data in (Data(), DataWithHook()):
        data_connector.warning_cache.clear()  # Lightning warns once per process: start from a clean slate
        net = Net(preset="medium", num_classes=2, verbose=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fast_trainer(max_epochs=1).fit(net, datamodule=data)
        assert not [str(w.message) for w in caught if "on_after_batch_transfer" in str(w.message)]
        assert len(net.seen_targets) == 2
        for t in net.seen_targets:  # the preset's label smoothing (and Mixup) reached every batch
            assert t.shape == (8, 2) and bool(((t > 0) & (t < 1)).all())
        assert data.hook_calls == (2 if isinstance(data, DataWithHook) else 0)


def test_a_dataloader_iter_step_gets_its_batches_unmixed():
    """Lightning moves no batch for training_step(dataloader_iter); the mixing leaves it alone too."""

    class IterNet(Net):
        def training_step(self, dataloader_iter):
            (x, y), _, _ = next(dataloader_iter)
            self.seen_targets.append(y.detach().clone())
            return self.mixing_loss(self(x), y)

    net = IterNet(batch_mixer=BatchMixer(num_classes=2, mixup_alpha=1.0, seed=0))
    trainer = fast_trainer(max_steps=2)
    trainer.fit(net, DataLoader(TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,))), batch_size=8))
    assert [t.dtype for t in net.seen_targets] == [torch.int64, torch.int64]


def test_user_hook_runs_first_and_its_result_is_mixed():
    class Scaled(Net):
        def on_after_batch_transfer(self, batch, dataloader_idx):  # no super() call on purpose
            x, y = batch
            return x * 0 + 1.0, y

    net = Scaled(batch_mixer=BatchMixer(num_classes=2, mixup_alpha=1.0, seed=0))
    trainer = fast_trainer(max_steps=1)
    trainer.fit(net, DataLoader(TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), batch_size=8))
    assert net.seen_targets[0].shape == (8, 2)  # soft targets: the user's hook ran, then mixing


def test_a_user_wrapper_around_the_mixing_step_still_trains_mixed_batches():
    # a profiler or a guard wrapping the instance's training_step with functools.wraps: Lightning's
    # override check unwraps one level and reads __code__, which the mixing step must answer
    import functools

    torch.manual_seed(0)
    net = Net(batch_mixer=BatchMixer(num_classes=2, mixup_alpha=1.0, seed=0))
    inner = net.training_step
    calls = []

    @functools.wraps(inner)
    def traced(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    object.__setattr__(net, "training_step", traced)
    loader = DataLoader(TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,))), batch_size=8)
    fast_trainer(max_epochs=1).fit(net, loader)
    assert len(calls) == 2 and all(t.shape == (8, 2) for t in net.seen_targets)  # mixed: soft targets
