"""Shared pytest fixtures for lightning-reg tests."""

from __future__ import annotations

import os

import pytest
import torch

# Two CPU cores: keep each process to one intra-op thread so parallel ranks do not fight.
torch.set_num_threads(1)
os.environ.setdefault("PYTHONUNBUFFERED", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
