"""Capture and restore the random-number states a training process draws from, as checkpoint-safe values.

A process draws from four kinds of global generators: torch's CPU generator (``torch.rand``, dropout
and drop path on CPU, ``DataLoader`` iterator seeds, ``RandomSampler``), one generator per CUDA device
(dropout and drop path on the GPU), numpy's legacy global generator (``np.random.*``) and Python's
``random`` module. [`capture_rng_states`][lightning_reg.reproducibility.rng.capture_rng_states] reads all of
them into plain values (tensors, ints, floats,
lists, tuples), so the result can be stored in a Lightning checkpoint and loaded with
``torch.load(..., weights_only=True)``;
[`restore_rng_states`][lightning_reg.reproducibility.rng.restore_rng_states] puts them back. Generators a user
creates and keeps (``torch.Generator()`` objects, ``np.random.default_rng()``) are not global: they
belong in the state of whatever owns them (e.g. a stateful data loader).

Only the CUDA devices named are read: ``torch.cuda.get_rng_state_all()`` would initialise a CUDA context
on every visible GPU, including those of the other ranks.

Example:
    >>> import random, torch
    >>> states = capture_rng_states()
    >>> a = (torch.rand(2), random.random())
    >>> restore_rng_states(states)
    >>> b = (torch.rand(2), random.random())
    >>> torch.equal(a[0], b[0]) and a[1] == b[1]
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from lightning_reg._shared.validation import check_bool

__all__ = ["capture_rng_states", "restore_rng_states"]

_KINDS = ("torch", "cuda", "numpy", "python")


def _cuda_index(device: int | str | torch.device) -> int:
    if isinstance(device, bool):
        raise TypeError(f"`cuda_devices` must hold device indices or CUDA devices; got {device!r}.")
    if isinstance(device, int):
        return device
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"`cuda_devices` must hold CUDA devices; got {device!r}.")
    return torch.cuda.current_device() if dev.index is None else dev.index


def capture_rng_states(
    cuda_devices: Iterable[int | str | torch.device] = (), *, numpy: bool = True, python: bool = True
) -> dict[str, Any]:
    """Read the global random-number states of this process.

    Args:
        cuda_devices: the CUDA devices (indices or ``torch.device``) whose generators to read; only
            those in use, so no context is created on other GPUs.
        numpy: read numpy's global generator (skipped when numpy is not installed).
        python: read Python's ``random`` module.

    Returns:
        A dict with the keys ``"torch"`` (a ``ByteTensor``), ``"cuda"`` (``{index: ByteTensor}``),
        ``"numpy"`` and ``"python"`` (``None`` when not read); every value loads with
        ``torch.load(weights_only=True)``.

    Example:
        >>> sorted(capture_rng_states())
        ['cuda', 'numpy', 'python', 'torch']
    """
    check_bool("numpy", numpy)
    check_bool("python", python)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": {i: torch.cuda.get_rng_state(i) for i in sorted({_cuda_index(d) for d in cuda_devices})},
        "numpy": _numpy_state() if numpy else None,
        "python": random.getstate() if python else None,
    }
    return states


def _numpy_state() -> dict[str, Any] | None:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency of torch's usual installs
        return None
    state = np.random.get_state(legacy=True)
    # the legacy tuple form; a dict comes only from a bit generator other than the global MT19937
    assert isinstance(state, tuple), type(state)
    kind, key, pos, has_gauss, cached = state
    return {
        "kind": str(kind),
        "key": torch.from_numpy(key.astype("int64")),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Set the global random-number states read by ``capture_rng_states``.

    Kinds that are missing or ``None`` (not captured) are left alone. CUDA states are restored on the
    devices they were read from.

    Args:
        states: the dict [`capture_rng_states`][lightning_reg.reproducibility.rng.capture_rng_states] returned
            (possibly after a checkpoint round trip).

    Raises:
        TypeError: ``states`` is not a mapping, or holds an unknown kind.

    Example:
        >>> import numpy as np
        >>> states = capture_rng_states()
        >>> first = np.random.rand()
        >>> restore_rng_states(states)
        >>> np.random.rand() == first
        True
    """
    if not isinstance(states, Mapping):
        raise TypeError(f"`states` must be a dict from capture_rng_states(); got {type(states).__name__}.")
    unknown = sorted(set(states) - set(_KINDS))
    if unknown:
        raise TypeError(f"`states` holds unknown kinds {unknown}; expected some of {list(_KINDS)}.")
    if states.get("torch") is not None:
        torch.set_rng_state(states["torch"])
    for index, state in (states.get("cuda") or {}).items():
        torch.cuda.set_rng_state(state, int(index))
    if states.get("numpy") is not None:
        import numpy as np

        s = states["numpy"]
        key = s["key"].numpy() if isinstance(s["key"], torch.Tensor) else np.asarray(s["key"])
        np.random.set_state((s["kind"], key.astype("uint32"), s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if states.get("python") is not None:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
