"""LightningCLI entry point: ``python -m example_projects.mnist1d fit --config <yaml>``."""

from example_projects.common import make_cli
from example_projects.mnist1d.data import MNIST1DDataModule


def main() -> None:
    make_cli(MNIST1DDataModule)


if __name__ == "__main__":
    main()
