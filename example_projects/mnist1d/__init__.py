"""MNIST-1D example: ``python -m example_projects.mnist1d fit --config <configs/X.yaml>``."""

from example_projects.mnist1d.data import MNIST1DDataModule, load_mnist1d
from example_projects.mnist1d.models import MLP, MLPClassifier, ResNet1d, ResNet1dClassifier

__all__ = ["MLP", "MLPClassifier", "MNIST1DDataModule", "ResNet1d", "ResNet1dClassifier", "load_mnist1d"]
