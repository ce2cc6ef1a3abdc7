"""LightningCLI entry point: ``python -m example_projects.digits fit --config <yaml>``."""

from example_projects.common import make_cli
from example_projects.digits.data import DigitsDataModule


def main() -> None:
    make_cli(DigitsDataModule)


if __name__ == "__main__":
    main()
