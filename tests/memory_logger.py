"""An in-memory Lightning logger for tests: keeps every ``log_metrics`` call as given."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers.logger import Logger


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call unconverted (tensors stay tensors, so logging causes no host sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, Any]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def series(self, key: str) -> list[tuple[int | None, Any]]:
        """``(step, value)`` of every call that logged ``key``, values as given."""
        return [(s, m[key]) for s, m in self.calls if key in m]

    def at(self, step: int, key: str) -> list[float]:
        """Values of ``key`` logged at ``step``, as floats."""
        return [float(v) for s, v in self.series(key) if s == step]
