"""Cost of the issue-9 regularizers against plain baselines (CPU, medians, variants interleaved).

1. Penalties on a ViT-Ti/16-like torchvision VisionTransformer (its decayed parameters):
   elastic-net value + backward, the automatic-mode gradient (``add_penalty_grad_``) and the proximal step
   (``soft_threshold_``), each against the per-parameter Python loop a user would write, and as a share
   of one plain training step (forward + backward + SGD step, batch 8 at 224 px).
2. Batch mixing of a 64 x 3 x 32 x 32 batch: ``BatchMixer`` (Mixup, CutMix) against torchvision's
   ``transforms.v2.MixUp`` / ``CutMix`` on the same batch, and as a share of a ResNet-18 training step.
3. Frozen BatchNorm: ResNet-18 forward with frozen BN in ``train()`` mode (instance ``train`` override +
   forward pre-hook) against the same model in plain ``eval()`` mode (same arithmetic, no hooks).

Run from the repository root: PYTHONPATH=. python benchmarks/penalties_mixing.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.transforms.v2 import CutMix, MixUp

from lightning_reg import (
    BatchMixer,
    add_penalty_grad_,
    decayed_parameters,
    elastic_net_penalty,
    freeze_batchnorm,
    soft_threshold_,
)


def interleaved_ms(
    fns: dict[str, Callable[[], object]], repeat: int = 9, warmup: int = 2
) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def penalties() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=224,
        patch_size=16,
        num_layers=12,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=768,
        num_classes=100,
    )
    params = decayed_parameters(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 100, (8,))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def ours_value() -> None:
        elastic_net_penalty(params, 1e-5, 1e-4).backward()

    def loop_value() -> None:
        (1e-5 * sum(p.abs().sum() for p in params) + 0.5e-4 * sum((p * p).sum() for p in params)).backward()

    def loop_grad() -> None:
        with torch.no_grad():
            for p in params:
                p.grad.add_(p, alpha=1e-4).add_(torch.sign(p), alpha=1e-5)

    def loop_prox() -> None:
        with torch.no_grad():
            for p in params:
                p.copy_(torch.sign(p) * torch.clamp(p.abs() - 1e-9, min=0))

    t = interleaved_ms(
        {
            "train step": step,
            "penalty value+backward (ours)": ours_value,
            "penalty value+backward (loop)": loop_value,
            "penalty grad, automatic (ours)": lambda: add_penalty_grad_(params, 1e-5, 1e-4),
            "penalty grad (loop)": loop_grad,
            "proximal step (ours)": lambda: soft_threshold_(params, 1e-9),
            "proximal step (loop)": loop_prox,
        }
    )
    base = t.pop("train step")
    print(f"1. penalties, ViT-Ti-like, {len(params)} decayed tensors; plain train step {base:.1f} ms")
    for name, ms in t.items():
        print(f"  {name:32s} {ms:7.2f} ms  = {100 * ms / base:5.2f}% of a step")
    for what in ("penalty value+backward", "penalty grad", "proximal step"):
        ours = next(v for k, v in t.items() if k.startswith(what) and "ours" in k)
        loop = next(v for k, v in t.items() if k.startswith(what) and "loop" in k)
        print(f"  {what}: loop / ours = {loop / ours:.2f}x")


def mixing() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    ours_mix = BatchMixer(10, mixup_alpha=0.2, seed=0)
    ours_cut = BatchMixer(10, mixup_alpha=0.0, cutmix_alpha=1.0, seed=0)
    tv_mix, tv_cut = MixUp(alpha=0.2, num_classes=10), CutMix(alpha=1.0, num_classes=10)
    t = interleaved_ms(
        {
            "train step": step,
            "Mixup (ours)": lambda: ours_mix(x, y),
            "Mixup (torchvision)": lambda: tv_mix(x, y),
            "CutMix (ours)": lambda: ours_cut(x, y),
            "CutMix (torchvision)": lambda: tv_cut(x, y),
        },
        repeat=15,
    )
    base = t.pop("train step")
    print(f"2. batch mixing, 64x3x32x32; ResNet-18 train step {base:.1f} ms")
    for name, ms in t.items():
        print(f"  {name:22s} {ms:6.3f} ms  = {100 * ms / base:5.2f}% of a step")
    print(
        f"  Mixup torchvision / ours = {t['Mixup (torchvision)'] / t['Mixup (ours)']:.2f}x; "
        f"CutMix torchvision / ours = {t['CutMix (torchvision)'] / t['CutMix (ours)']:.2f}x"
    )


def frozen_bn() -> None:
    torch.manual_seed(0)
    plain, frozen = resnet18(num_classes=10), resnet18(num_classes=10)
    frozen.load_state_dict(plain.state_dict())
    plain.eval()
    freeze_batchnorm(frozen)
    frozen.train()
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), frozen(x))
        t = interleaved_ms({"eval()": lambda: plain(x), "frozen, train()": lambda: frozen(x)}, repeat=15)
    print(
        f"3. frozen BatchNorm, ResNet-18 forward bs32@32px: eval() {t['eval()']:.2f} ms, frozen in train() "
        f"{t['frozen, train()']:.2f} ms, ratio {t['frozen, train()'] / t['eval()']:.3f}"
    )


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    penalties()
    mixing()
    frozen_bn()


if __name__ == "__main__":
    main()
