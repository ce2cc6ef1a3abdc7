"""Whether this torch build draws a number-rate and a tensor-rate ``bernoulli_`` from one random stream.

On CPU, torch < 2.7 on Intel processors draws ``bernoulli_(p)`` with a Python number ``p`` from MKL's
Bernoulli generator (seeded from torch's) and ``bernoulli_(tensor)`` from torch's own generator: the
masks have the same distribution but are not bitwise equal. Tests that compare the tensor-rate path
(scheduled rates) bitwise with a number-rate original skip there.
"""

from __future__ import annotations

import pytest
import torch


def number_and_tensor_rates_draw_alike() -> bool:
    """Draw 256 Bernoulli(0.9) masks both ways from the same seed (the caller's RNG state is kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        by_number = torch.empty(256).bernoulli_(0.9)
        torch.manual_seed(0)
        by_tensor = torch.empty(256).bernoulli_(torch.tensor(0.9, dtype=torch.float64))
    return torch.equal(by_number, by_tensor)


same_bernoulli_stream = pytest.mark.skipif(
    not number_and_tensor_rates_draw_alike(),
    reason=f"torch {torch.__version__} draws CPU bernoulli_(number) from MKL's stream (torch < 2.7 on Intel"
    " CPUs) and bernoulli_(tensor) from torch's: same distribution, not the same masks",
)
