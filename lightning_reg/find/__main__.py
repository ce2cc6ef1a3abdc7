"""``python -m lightning_reg.find --config my.yaml``: search the regularization of a LightningCLI config."""

import sys

from lightning_reg.find.cli import finder_main

if __name__ == "__main__":
    sys.exit(finder_main())
