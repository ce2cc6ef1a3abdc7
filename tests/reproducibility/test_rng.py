"""capture_rng_states / restore_rng_states: every global generator, through a weights_only checkpoint."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from lightning_reg.reproducibility.rng import capture_rng_states, restore_rng_states


def _draws() -> tuple[list[float], list[float], list[float]]:
    numpy_draws = [float(np.random.randn()), *np.random.rand(3).tolist()]  # randn first: the cached one
    return torch.rand(3).tolist(), numpy_draws, [random.random() for _ in range(3)]


def test_round_trip_through_a_weights_only_checkpoint_restores_every_generator() -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # draws a pair of Gaussians and caches the second: part of numpy's state
    states = capture_rng_states()
    assert states["numpy"]["has_gauss"] == 1
    expected = _draws()
    buf = io.BytesIO()
    torch.save({"rng": states}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["rng"]  # plain values: no pickled numpy objects
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_states(loaded)
    assert _draws() == expected


def test_left_out_generators_are_left_alone() -> None:
    states = capture_rng_states(numpy=False, python=False)
    assert states["numpy"] is None and states["python"] is None and states["cuda"] == {}
    torch_first = torch.rand(2)
    np.random.seed(5)
    np_first = np.random.rand()
    restore_rng_states(states)
    assert torch.equal(torch.rand(2), torch_first)  # torch rewound
    np.random.seed(5)
    assert np.random.rand() == np_first  # numpy untouched by the restore (its own seed decides)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="`states` must be a dict"):
        restore_rng_states([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unknown kinds \['mps'\]"):
        restore_rng_states({"mps": None})
    with pytest.raises(TypeError, match="`numpy` must be a bool"):
        capture_rng_states(numpy=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must hold CUDA devices; got 'cpu'"):
        capture_rng_states(["cpu"])


@pytest.mark.gpu
def test_cuda_generator_of_the_device_in_use() -> None:
    states = capture_rng_states([torch.device("cuda", 0)])
    assert set(states["cuda"]) == {0}
    first = torch.rand(4, device="cuda")
    restore_rng_states(states)
    assert torch.equal(torch.rand(4, device="cuda"), first)
