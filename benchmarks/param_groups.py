"""Cost of RegularizedModule's parameter groups, against plain AdamW over model.parameters().

1. One-off: building the groups (torchvision vit_b_16 / convnext_tiny / swin_t, built on the meta device)
   vs timm's `param_groups_weight_decay` (ndim rule).
2. Per step: AdamW.step() over our 2 groups (decay / no_decay) and over 2 x 14 layer-decay groups vs one
   group of all parameters (ViT-Ti/16-like torchvision ViT on CPU, gradients filled once). The ratio should
   be ~1.0 or below: the groups add no per-step work beyond splitting the foreach batches.

Timings come from ``benchmarks/harness.py`` (variants interleaved, medians, per-round paired ratios).
Run from the repository root: ``PYTHONPATH=. python benchmarks/param_groups.py``. Writes
``benchmarks/results/param_groups.json`` and ``docs/benchmarks/results/param_groups.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from torchvision.models import convnext_tiny, swin_t, vit_b_16
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_reg and harness

from benchmarks.harness import Report, time_interleaved  # noqa: E402
from lightning_reg import weight_decay_param_groups  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the AdamW step timing")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from timm.optim import param_groups_weight_decay

    report = Report(
        "param_groups",
        "PYTHONPATH=. python " + shlex.join(["benchmarks/param_groups.py", *sys.argv[1:]]),
        title="Weight-decay parameter groups: one-off build cost and AdamW step cost",
    )

    print("1. building groups (one-off, ms, median of 7)")
    for factory in (vit_b_16, convnext_tiny, swin_t):
        with torch.device("meta"):
            model = factory()
        t = time_interleaved(
            {
                "ours": lambda m=model: weight_decay_param_groups(m, 0.05),
                "layer_decay": lambda m=model: weight_decay_param_groups(m, 0.05, layer_decay=0.75, lr=1e-3),
                "timm": lambda m=model: param_groups_weight_decay(m, 0.05),
            },
            rounds=7,
        )
        n = sum(1 for _ in model.parameters())
        section, model_label = "build the groups (one-off, at fit start)", f"{factory.__name__} ({n} tensors)"
        for key, label in (
            ("ours", "weight_decay_param_groups"),
            ("layer_decay", "with layer_decay=0.75"),
            ("timm", "timm param_groups_weight_decay (ndim rule)"),
        ):
            report.add(section, label, t.median(key) * 1e3, unit="ms", column=model_label,
                       summary="weight_decay" if key == "ours" else False)

    print(
        f"2. AdamW.step() per step (ms, median of {args.rounds}, variants interleaved), ViT-Ti/16-like, CPU"
    )
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
    # the first steps allocate the optimizer state: warm-up steps are not timed
    t = time_interleaved({label: opt.step for label, opt in opts.items()}, rounds=args.rounds, warmup=2)
    base = next(iter(opts))
    section = "AdamW(foreach=True).step(), ViT-Ti/16-like (CPU)"
    for label in opts:
        report.add(section, label, t.median(label) * 1e3, unit="ms")
    for label in list(opts)[1:]:
        report.add(section, f"{label} / one group", t.ratio(label, base), unit="x", target="<= 1.05",
                   summary="weight_decay")
    report.note(
        "Building the groups is a one-off at fit start (models built on the meta device, medians of 7"
        " interleaved rounds). The step ratios are paired per round against one group of all parameters"
        " (geometric mean, 95 % interval)."
    )
    report.save()


if __name__ == "__main__":
    main()
