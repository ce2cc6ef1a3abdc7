"""Results a spawned worker hands back to the callback object in the launching process.

Lightning's spawn- and fork-based launchers (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) run ``fit`` on
copies of the callbacks in worker processes and bring back only the weights and
``trainer.callback_metrics``; the callback object the user holds is never touched. A callback that keeps a
``SpawnResultChannel`` (created in its ``__init__``, in the launching process) writes a few numbers into it
in the worker, and its ``Published`` attributes read them back in the launching process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, overload

import torch

__all__ = ["Published", "SpawnResultChannel"]

_T = TypeVar("_T")


class SpawnResultChannel:
    """A few numbers in shared memory: a worker publishes them, the launching process takes them once.

    The tensor is moved to shared memory at construction, so the workers' copies of the owner (pickled by
    ``torch.multiprocessing``, or forked) write into the memory the launching process reads. Its first entry
    counts publications (the *generation*); ``seen`` is, per process, the last generation this copy took or
    published, so nobody takes its own publication or the same one twice.

    Args:
        size: how many numbers one publication holds.

    Example:
        >>> channel = SpawnResultChannel(2)
        >>> channel.take() is None
        True
        >>> worker = SpawnResultChannel(2)  # in a real run: the worker's copy, sharing the same memory
        >>> worker.values = channel.values
        >>> worker.publish([3.0, 0.5])
        >>> channel.take(), channel.take()
        ([3.0, 0.5], None)
    """

    def __init__(self, size: int) -> None:
        self.values = torch.zeros(size + 1, dtype=torch.float64)
        self.seen = 0
        try:
            self.values.share_memory_()
        except (RuntimeError, OSError):  # pragma: no cover - no shared memory: results stay in the workers
            pass

    def publish(self, values: Sequence[float] | None) -> None:
        """In a worker at the end of ``fit``: count one publication; write ``values`` (rank 0) or nothing.

        Every rank calls it, so that no copy later takes the publication of its own ``fit``.

        Args:
            values: the numbers (``size`` of them) on the rank that writes; ``None`` on the others.

        Example:
            >>> channel = SpawnResultChannel(1)
            >>> channel.publish(None)
            >>> channel.seen
            1
        """
        self.seen += 1
        if values is not None:
            self.values.copy_(torch.tensor([self.seen, *values], dtype=torch.float64))

    def take(self) -> list[float] | None:
        """Return the numbers of a publication this process has not seen yet (once), else ``None``.

        Example:
            >>> SpawnResultChannel(3).take() is None
            True
        """
        if int(self.values[0]) <= self.seen:
            return None
        values = self.values.tolist()
        self.seen = int(values[0])
        return values[1:]

    def __eq__(self, other: object) -> bool:  # copies compare equal (pickling must preserve vars())
        if not isinstance(other, SpawnResultChannel):
            return False
        same = torch.equal(self.values.nan_to_num(-1.0), other.values.nan_to_num(-1.0))
        return same and self.seen == other.seen

    __hash__ = None  # type: ignore[assignment]  # unhashable; typeshed declares object.__hash__ a method


class Published(Generic[_T]):
    """An attribute a spawned worker may have set: reading it first applies the channel's new results.

    The value lives in the instance's ``__dict__`` under ``_<name>``; ``take(instance)`` (the owner's
    method that takes a ``SpawnResultChannel`` publication and writes the published attributes) runs
    before every read.

    Args:
        take: called with the instance before each read.

    Example:
        >>> class Counter:
        ...     value = Published(lambda self: self.__dict__.update(_value=self.__dict__["_value"] + 1))
        >>> c = Counter()
        >>> c.value = 1
        >>> c.value
        2
    """

    def __init__(self, take: Callable[[Any], None]) -> None:
        self.take = take

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Published[_T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> _T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Published[_T] | _T:
        if obj is None:
            return self
        self.take(obj)
        return obj.__dict__[self.slot]

    def __set__(self, obj: object, value: _T) -> None:
        obj.__dict__[self.slot] = value
