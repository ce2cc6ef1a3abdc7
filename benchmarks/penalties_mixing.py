"""Cost of the penalties, batch mixing and frozen BatchNorm against plain baselines (CPU, medians).

1. Penalties on a ViT-Ti/16-like torchvision VisionTransformer (its decayed parameters):
   elastic-net value + backward, the automatic-mode gradient (``add_penalty_grad_``) and the proximal step
   (``soft_threshold_``), each against the per-parameter Python loop a user would write, and as a share
   of one plain training step (forward + backward + SGD step, batch 8 at 224 px).
2. Batch mixing of a 64 x 3 x 32 x 32 batch: ``BatchMixer`` (Mixup, CutMix) against torchvision's
   ``transforms.v2.MixUp`` / ``CutMix`` on the same batch, and as a share of a ResNet-18 training step.
3. Frozen BatchNorm: ResNet-18 forward with frozen BN in ``train()`` mode (instance ``train`` override +
   forward pre-hook) against the same model in plain ``eval()`` mode (same arithmetic, no hooks).

Timings come from ``benchmarks/harness.py`` (variants interleaved round by round, medians, per-round paired
ratios). Run from the repository root: ``PYTHONPATH=. python benchmarks/penalties_mixing.py``. Writes
``benchmarks/results/penalties_mixing.json`` and ``docs/benchmarks/results/penalties_mixing.md``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.transforms.v2 import CutMix, MixUp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_reg and harness

from benchmarks.harness import Report, Timings, time_interleaved  # noqa: E402
from lightning_reg import BatchMixer, freeze_batchnorm  # noqa: E402
from lightning_reg.penalties import elastic_net_penalty  # noqa: E402
from lightning_reg.penalties.functional import add_penalty_grad_, decayed_parameters, soft_threshold_  # noqa: E402


def penalties(report: Report) -> None:
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

    t = time_interleaved(
        {
            "train step": step,
            "penalty value+backward (ours)": ours_value,
            "penalty value+backward (loop)": loop_value,
            "penalty gradient, automatic mode (ours)": lambda: add_penalty_grad_(params, 1e-5, 1e-4),
            "penalty gradient (loop)": loop_grad,
            "proximal step (ours)": lambda: soft_threshold_(params, 1e-9),
            "proximal step (loop)": loop_prox,
        },
        rounds=9,
    )
    section = f"penalties, ViT-Ti/16-like, {len(params)} decayed tensors (reference: per-parameter loop)"
    ops = {
        "penalty value+backward": ("penalty value+backward (ours)", "penalty value+backward (loop)"),
        "penalty gradient (automatic mode)": (
            "penalty gradient, automatic mode (ours)",
            "penalty gradient (loop)",
        ),
        "proximal step": ("proximal step (ours)", "proximal step (loop)"),
    }
    # the claims: the fused penalty and the proximal step beat the loops; the automatic-mode gradient is not
    # faster than a loop on CPU (unfused _foreach ops) but stays a small share of a step
    targets = {"penalty value+backward": ">= 1", "proximal step": ">= 1"}
    share_targets = {"penalty gradient (automatic mode)": "<= 2"}
    compare(report, section, t, ops, "plain train step (fwd + bwd + SGD, batch 8 at 224 px)", "penalties",
            targets, share_targets)


def compare(
    report: Report,
    section: str,
    t: Timings,
    ops: dict[str, tuple[str, str]],
    step_label: str,
    group: str,
    targets: dict[str, str],
    share_targets: dict[str, str] | None = None,
) -> None:
    """One row per operation: ours, the reference, each as a share of a train step, their paired ratio."""
    base = t.median("train step")
    for op, (ours, ref) in ops.items():
        for column, name in (("ours", ours), ("reference", ref)):
            report.add(section, op, t.median(name) * 1e3, "ms", column=column, summary=group)
            share_target = (share_targets or {}).get(op, "") if column == "ours" else ""
            report.add(section, op, 100 * t.median(name) / base, "%", share_target,
                       column=f"{column}, share of a train step", summary=group)
        report.add(section, op, t.ratio(ref, ours), "x", targets.get(op, ""), column="reference / ours",
                   summary=group)
    report.add(section, step_label, base * 1e3, "ms", column="reference", summary=group)


def mixing(report: Report) -> None:
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
    t = time_interleaved(
        {
            "train step": step,
            "Mixup (ours)": lambda: ours_mix(x, y),
            "Mixup (torchvision)": lambda: tv_mix(x, y),
            "CutMix (ours)": lambda: ours_cut(x, y),
            "CutMix (torchvision)": lambda: tv_cut(x, y),
        },
        rounds=15,
    )
    section = "batch mixing, 64x3x32x32 (reference: torchvision.transforms.v2)"
    ops = {
        "Mixup": ("Mixup (ours)", "Mixup (torchvision)"),
        "CutMix": ("CutMix (ours)", "CutMix (torchvision)"),
    }
    # Mixup runs torchvision's arithmetic (as fast); CutMix copies only the box (faster)
    compare(report, section, t, ops, "ResNet-18 train step", "mixing", {"Mixup": ">= 0.95", "CutMix": ">= 1"})


def frozen_bn(report: Report) -> None:
    torch.manual_seed(0)
    plain, frozen = resnet18(num_classes=10), resnet18(num_classes=10)
    frozen.load_state_dict(plain.state_dict())
    plain.eval()
    freeze_batchnorm(frozen)
    frozen.train()
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), frozen(x))
        t = time_interleaved({"eval()": lambda: plain(x), "frozen, train()": lambda: frozen(x)}, rounds=15)
    section = "frozen BatchNorm, ResNet-18 forward bs32@32px"
    report.add(section, "plain eval()", t.median("eval()") * 1e3, unit="ms", summary="batchnorm")
    frozen_ms = t.median("frozen, train()") * 1e3
    report.add(section, "frozen, in train()", frozen_ms, unit="ms", summary="batchnorm")
    # one forward pre-hook per layer is all a frozen layer adds
    report.add(section, "frozen in train() / eval()", t.ratio("frozen, train()", "eval()"), unit="x",
               target="<= 1.05", summary="batchnorm")


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = Report(
        "penalties_mixing",
        "PYTHONPATH=. python " + shlex.join(["benchmarks/penalties_mixing.py", *sys.argv[1:]]),
        title="Penalties, proximal L1, batch mixing and frozen BatchNorm against plain baselines",
    )
    penalties(report)
    mixing(report)
    frozen_bn(report)
    report.note(
        "Medians of interleaved rounds (9 for the penalties, 15 for mixing and BatchNorm); `reference / ours`"
        " is the paired ratio per round (geometric mean, 95 % interval; above 1: ours is faster)."
    )
    report.save()


if __name__ == "__main__":
    main()
