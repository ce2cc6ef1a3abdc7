"""8x8 digits example: ``python -m example_projects.digits fit --config <configs/X.yaml>``."""

from example_projects.digits.data import DigitsDataModule
from example_projects.digits.models import DigitsResNet, resnet_for_8x8

__all__ = ["DigitsDataModule", "DigitsResNet", "resnet_for_8x8"]
