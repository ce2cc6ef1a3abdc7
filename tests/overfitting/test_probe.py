"""EvalModeProbe alone: the value of a manual eval-mode pass, and nothing of the run changed."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_reg.overfitting.probe import EvalModeProbe


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
        self.val_acc = MulticlassAccuracy(num_classes=3, average="micro")

    def forward(self, x):
        return self.net(x)

    def validation_step(self, batch, batch_idx):
        logits = self(batch[0])
        self.log("val_loss", nn.functional.cross_entropy(logits, batch[1]))
        self.val_acc(logits, batch[1])
        self.log("val_acc", self.val_acc)


def data(n=10):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def test_measure_equals_a_manual_eval_mode_pass_and_leaves_the_module_as_it_was():
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches of 4, 4, 2: weighted by size
    net = Net()
    net.train()
    net.val_acc.update(net(x[:3]).detach(), y[:3])  # the module's own accumulated state, to keep
    own_state = net.val_acc.tp.clone()
    probe = EvalModeProbe(
        loader, keys={"loss": "val_loss", "acc": "val_acc"}, metrics={"top": MulticlassAccuracy(3, top_k=2)}
    )
    rng = torch.get_rng_state()
    values = probe.measure(L.Trainer(accelerator="cpu", logger=False), net)
    assert torch.equal(torch.get_rng_state(), rng) and net.training and net.net[1].training
    assert torch.equal(net.val_acc.tp, own_state) and own_state.sum() > 0
    net.eval()
    with torch.no_grad():
        logits = net(x)
    assert list(values) == ["top", "loss", "acc"]
    assert values["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert values["acc"] == pytest.approx((logits.argmax(-1) == y).float().mean().item(), abs=1e-7)
    top2 = logits.topk(2, dim=-1).indices.eq(y[:, None]).any(-1).float().mean().item()
    assert values["top"] == pytest.approx(top2, abs=1e-7)


def test_a_key_validation_step_does_not_log_is_named():
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    probe = EvalModeProbe(DataLoader(TensorDataset(*data()), batch_size=5), keys={"loss": "val_los"})
    logged = r"did not log 'val_los' \(it logged \['val_acc', 'val_loss'\]"
    with pytest.raises(MisconfigurationException, match=logged):
        probe.measure(L.Trainer(accelerator="cpu", logger=False), Net())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data": 0.0}, ValueError, r"`data` must be a fraction in \(0, 1\].*got 0.0"),
        ({"data": True}, TypeError, r"`data`.*got True"),
        ({"metrics": {"acc": "accuracy"}}, TypeError, r"`metrics\['acc'\]` must be a torchmetrics.Metric"),
        ({"keys": {}}, ValueError, r"exactly one of `keys` and `metrics`"),
        ({"metrics": {"loss": MulticlassAccuracy(3)}}, ValueError, r"exactly one.*keys \['loss'\]"),
        ({"forward": 3}, TypeError, r"`forward`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs = {"data": 0.5, "keys": {"loss": "val_loss"}, **kwargs}
    with pytest.raises(error, match=match):
        EvalModeProbe(**kwargs)


def test_a_fraction_of_a_dataset_without_a_length_is_refused_by_name():
    from types import SimpleNamespace

    from lightning.pytorch.utilities.exceptions import MisconfigurationException
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            yield from zip(*data())

    loader = DataLoader(Stream(), batch_size=2)
    trainer = SimpleNamespace(train_dataloader=loader, global_rank=0, world_size=1)
    probe = EvalModeProbe(0.5, keys={"loss": "val_loss"})
    with pytest.raises(MisconfigurationException, match=r"dataset with a length \(got Stream.*__len__"):
        probe.loader(trainer)
