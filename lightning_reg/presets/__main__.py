"""``python -m lightning_reg.presets [NAME ...]``: print presets as LightningCLI config fragments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Print the config fragment of each named preset (all of them without arguments)."""
    from lightning_reg.presets.callbacks import preset_config
    from lightning_reg.presets.registry import PRESET_NAMES

    parser = argparse.ArgumentParser(
        prog="python -m lightning_reg.presets",
        description="Print regularization presets as LightningCLI config fragments (YAML).",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"one of {', '.join(PRESET_NAMES)} (default: all)"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="a classifier's number of classes: early stopping then follows val_acc (max)",
    )
    parser.add_argument(
        "--monitor", default=None, help="validation metric for early stopping (default: val_acc with "
        "--num-classes, else val_loss)"
    )
    parser.add_argument(
        "--mode", default=None, choices=["min", "max"], help="required with a --monitor other than val_loss"
    )
    parser.add_argument(
        "--fixed-model",
        action="store_true",
        help="write model.preset instead of model.init_args.preset (LightningCLI(MyModel), one model class)",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in PRESET_NAMES]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {list(PRESET_NAMES)}")
    if args.num_classes is not None and args.num_classes < 2:
        parser.error(f"--num-classes must be >= 2; got {args.num_classes}")
    if args.mode is None and args.monitor not in (None, "val_loss"):
        parser.error(f"--mode is required with --monitor {args.monitor}: min (a loss) or max (an accuracy)")
    for i, name in enumerate(args.names or PRESET_NAMES):
        if i:
            print("---")
        text = preset_config(
            name,
            monitor=args.monitor,
            mode=args.mode,
            num_classes=args.num_classes,
            fixed_model=args.fixed_model,
        )
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
