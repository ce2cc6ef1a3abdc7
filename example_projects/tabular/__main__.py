"""LightningCLI entry point: ``python -m example_projects.tabular fit --config <yaml>``."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from example_projects.common import make_cli
from example_projects.tabular.data import TabularDataModule


def main(args: Any = None, run: bool = True) -> LightningCLI:
    """Run the CLI on ``args`` (default: the command line)."""
    return make_cli(TabularDataModule, args=args, run=run)


if __name__ == "__main__":
    main()
