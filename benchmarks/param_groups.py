"""Cost of RegularizedModule's parameter groups, against plain AdamW over model.parameters().

1. One-off: building the groups (torchvision vit_b_16 / convnext_tiny / swin_t, built on the meta device)
   vs timm's `param_groups_weight_decay` (ndim rule).
2. Per step: AdamW.step() over our 2 groups (decay / no_decay) and over 2 x 12 layer-decay groups vs one
   group of all parameters (ViT-S-like torchvision ViT on CPU, gradients filled once). The ratio should be
   ~1.0: the groups add no per-step work beyond splitting the foreach batches.

Run from the repository root: PYTHONPATH=. python benchmarks/param_groups.py
"""

from __future__ import annotations

import statistics
import time

import torch
from torchvision.models import convnext_tiny, swin_t, vit_b_16
from torchvision.models.vision_transformer import VisionTransformer

from lightning_reg import weight_decay_param_groups


def median_ms(fn, repeat: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from timm.optim import param_groups_weight_decay

    print("1. building groups (one-off, ms, median of 7)")
    for factory in (vit_b_16, convnext_tiny, swin_t):
        with torch.device("meta"):
            model = factory()
        ours = median_ms(lambda m=model: weight_decay_param_groups(m, 0.05))
        ld = median_ms(lambda m=model: weight_decay_param_groups(m, 0.05, layer_decay=0.75, lr=1e-3))
        timm = median_ms(lambda m=model: param_groups_weight_decay(m, 0.05))
        n = sum(1 for _ in model.parameters())
        name = factory.__name__
        print(f"  {name:14s} {n:4d} tensors: ours {ours:6.2f}  with layer_decay {ld:6.2f}  timm {timm:6.2f}")

    print("2. AdamW.step() per step (ms, median of 15, variants interleaved), ViT-Ti/16-like, CPU")
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
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    variants = {
        "plain": [{"params": list(model.parameters()), "weight_decay": 0.05}],
        "decay/no_decay": weight_decay_param_groups(model, 0.05),
        "layer_decay": weight_decay_param_groups(model, 0.05, layer_decay=0.75, lr=1e-3),
    }
    opts = {
        f"{k} ({len(g)} groups)": torch.optim.AdamW(g, lr=1e-3, foreach=True) for k, g in variants.items()
    }
    times: dict[str, list[float]] = {k: [] for k in opts}
    for i in range(17):
        for label, opt in opts.items():
            t = time.perf_counter()
            opt.step()
            if i >= 2:  # first steps allocate the optimizer state
                times[label].append((time.perf_counter() - t) * 1e3)
    base = statistics.median(next(iter(times.values())))
    for label, ts in times.items():
        ms = statistics.median(ts)
        print(f"  {label:28s} {ms:7.2f} ms  ratio {ms / base:5.3f}")


if __name__ == "__main__":
    main()
