"""What ``EarlyStopping(save_weights_in_checkpoint=True)`` adds to a checkpoint (ResNet-18 + AdamW).

    python benchmarks/early_stopping_checkpoint.py

A ``ModelCheckpoint`` saves after every epoch of a short fit whose validation value improves at epochs 0 and
1 and gets worse at epoch 2. Sizes on disk of the checkpoint files:

* Lightning's own ``EarlyStopping`` (nothing extra: the reference);
* ours at a best epoch (the checkpoint's own ``state_dict`` is the best weights: only a marker is stored);
* ours after the best epoch (one copy of the best weights, in its own checkpoint entry);
* ours with ``save_weights_in_checkpoint=False``;

and the size of the weights themselves (parameters and buffers). Sizes do not depend on the machine's load.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Report  # noqa: E402
from lightning_reg import EarlyStopping  # noqa: E402
from tests.helpers import fast_trainer  # noqa: E402

VAL = [1.0, 0.5, 0.75]  # best at epoch 1; epoch 2 is worse


class ResNet18(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(VAL[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def fit(callback, directory: Path) -> dict[int, int]:
    """Run 3 epochs of one batch; return epoch -> checkpoint size in bytes."""
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
    ckpt = ModelCheckpoint(dirpath=directory, filename="{epoch}", save_top_k=-1)
    trainer = fast_trainer(
        max_epochs=3, accelerator="cpu", enable_checkpointing=True, callbacks=[callback, ckpt]
    )
    trainer.fit(ResNet18(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    return {e: (directory / f"epoch={e}.ckpt").stat().st_size for e in range(3)}


def main() -> None:
    torch.set_num_threads(1)
    report = Report(
        "early_stopping_checkpoint",
        "python benchmarks/early_stopping_checkpoint.py",
        "EarlyStopping: checkpoint size with the best weights inside (torchvision ResNet-18 + AdamW)",
    )
    mb = 1e6
    weights = sum(t.numel() * t.element_size() for t in ResNet18().state_dict().values())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lightning = fit(LightningEarlyStopping("val_loss", patience=5), root / "lightning")
        ours = fit(EarlyStopping("val_loss", patience=5, verbose=0), root / "ours")
        no_copy = EarlyStopping("val_loss", patience=5, verbose=0, save_weights_in_checkpoint=False)
        off = fit(no_copy, root / "off")
    report.add("sizes", "weights (parameters + buffers)", weights / mb, "MB")
    report.add("sizes", "Lightning EarlyStopping checkpoint", lightning[2] / mb, "MB", note="the reference",
               summary=True)
    report.add(
        "sizes",
        "ours, checkpoint at a best epoch",
        ours[1] / mb,
        "MB",
        note=f"{(ours[1] - lightning[1]) / 1e3:+.1f} kB vs Lightning: a marker (its state_dict is the best)",
        summary=True,
    )
    report.add(
        "sizes",
        "ours, checkpoint after the best epoch",
        ours[2] / mb,
        "MB",
        note=f"{(ours[2] - lightning[2]) / mb:+.1f} MB vs Lightning: one copy of the best weights",
        summary=True,
    )
    report.add(
        "sizes",
        "ours, save_weights_in_checkpoint=False",
        off[2] / mb,
        "MB",
        note=f"{(off[2] - lightning[2]) / 1e3:+.1f} kB vs Lightning",
        summary=True,
    )
    report.note(
        "A ModelCheckpoint monitoring the same metric writes its files at best epochs, so they carry only "
        "the marker; `last.ckpt` and periodic checkpoints written after the best epoch carry one copy, "
        "which a resumed run needs to restore a best epoch from before the interruption. lightning-reg 0.1 "
        "stored the copy in every checkpoint, inside the callback state."
    )
    report.save()


if __name__ == "__main__":
    main()
