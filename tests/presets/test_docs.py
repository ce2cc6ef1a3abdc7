"""The presets page shows exactly the library's presets (no hand-copied numbers drift)."""

from __future__ import annotations

from pathlib import Path

from lightning_reg.presets.registry import PRESET_NAMES, PRESETS, Preset

PAGE = Path(__file__).resolve().parents[2] / "docs" / "techniques" / "presets.md"


def _mix(prob: float, alpha: float) -> str:
    return "off" if prob == 0 else f"p = {prob:g} (alpha {alpha:g})"


def presets_table() -> str:
    """The contents table of docs/techniques/presets.md, rendered from PRESETS."""
    rows: list[tuple[str, callable]] = [
        ("weight decay (decoupled, decay group only)", lambda p: f"{p.weight_decay:g}"),
        ("label smoothing", lambda p: "off" if p.label_smoothing == 0 else f"{p.label_smoothing:g}"),
        ("Mixup, probability per batch", lambda p: _mix(p.mixup_prob, p.mixup_alpha)),
        ("CutMix, probability per batch", lambda p: _mix(p.cutmix_prob, p.cutmix_alpha)),
        (
            "drop-path rate of the deepest block",
            lambda p: (
                "off"
                if p.drop_path_rate == 0
                else f"{p.drop_path_rate:g} ({p.drop_path_rule}, {p.drop_path_schedule})"
            ),
        ),
        (
            "dropout of a model without residual blocks (drop-path's stand-in)",
            lambda p: "off" if p.dropout_rate == 0 else f"{p.dropout_rate:g} ({p.drop_path_schedule})",
        ),
        ("gradient clipping", lambda p: "off" if p.clipping is None else p.clipping),
        (
            "early stopping (`val_acc` with `num_classes`, else `val_loss`; restores the best weights)",
            lambda p: (
                f"patience {p.patience:.0%} of the checks"
                if isinstance(p.patience, float)
                else f"patience {p.patience}"
            ),
        ),
        ("overfitting monitor", lambda p: f"probe {p.overfitting_probe:g}, warm-up {p.overfitting_warmup}"),
        ("meant for", lambda p: p.summary),
    ]
    presets: list[Preset] = [PRESETS[n] for n in PRESET_NAMES]
    lines = [
        "| component | " + " | ".join(f"`{n}`" for n in PRESET_NAMES) + " |",
        "|---" * (len(PRESET_NAMES) + 1) + "|",
    ]
    lines += [f"| {label} | " + " | ".join(fn(p) for p in presets) + " |" for label, fn in rows]
    return "\n".join(lines)


def test_presets_page_table_matches_the_library():
    assert presets_table() in PAGE.read_text(), (
        "regenerate the table: PYTHONPATH=. python tests/presets/test_docs.py"
    )


if __name__ == "__main__":  # print the table to paste into the page
    print(presets_table())
