"""``python -m lightning_reg.report LOG_DIR [--out DIR]``: write the run's plots as PNG files."""

import sys

from lightning_reg.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
