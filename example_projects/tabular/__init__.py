"""Tabular example (scikit-learn's bundled breast cancer or wine data).

``python -m example_projects.tabular fit --config <configs/X.yaml>``.
"""

from example_projects.tabular.data import TabularDataModule, load_tabular
from example_projects.tabular.models import TabularMLP

__all__ = ["TabularDataModule", "TabularMLP", "load_tabular"]
