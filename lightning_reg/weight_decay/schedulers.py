"""Learning-rate schedules on ``torch.optim.lr_scheduler``, usable as LightningCLI ``LRSchedulerCallable``."""

from __future__ import annotations

import math

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupCosineLR", "warmup_cosine_factor"]


def warmup_cosine_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    warmup_start_factor: float = 0.0,
    min_lr_factor: float = 0.0,
) -> float:
    """Multiplier of the base LR at ``step``: linear warm-up, then half-cosine down to ``min_lr_factor``.

    ``step < warmup_steps``: ``s0 + (1 - s0) * step / warmup_steps``; then with
    ``progress = (step - warmup_steps) / (total_steps - warmup_steps)``:
    ``m + (1 - m) * (1 + cos(pi * progress)) / 2``; ``m`` from ``total_steps`` on.

    Args:
        step: optimizer steps taken so far (0 for the first step).
        warmup_steps: length of the linear warm-up (0 for none).
        total_steps: step at which the cosine reaches ``min_lr_factor``; ``> warmup_steps``.
        warmup_start_factor: ``s0``, the multiplier at step 0.
        min_lr_factor: ``m``, the final multiplier.

    Returns:
        The multiplier.

    Example:
        >>> [round(warmup_cosine_factor(s, 2, 6), 3) for s in range(7)]
        [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    if step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    if step >= total_steps:
        return min_lr_factor
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr_factor + (1.0 - min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LRScheduler):
    """Linear warm-up followed by cosine decay, per optimizer step, for every param group.

    Each group follows ``group["initial_lr"] * warmup_cosine_factor(step, ...)``, so the per-layer rates of
    layer-wise LR decay keep their ratios. Step it every optimizer step (Lightning: ``"interval": "step"``,
    which [`RegularizedModule`][lightning_reg.module.regularized.RegularizedModule] uses by default). All
    settings are saved in the
    scheduler's ``state_dict`` and restored on resume.

    With ``total_steps=None`` the length is filled in later:
    [`RegularizedModule`][lightning_reg.module.regularized.RegularizedModule] sets
    it to ``trainer.estimated_stepping_batches``; other users call ``set_total_steps`` before the end of
    the warm-up.

    Args:
        optimizer: the optimizer (LightningCLI passes it; in YAML give only the other arguments).
        warmup_steps: linear warm-up length in optimizer steps (0 for none).
        total_steps: total optimizer steps (end of the cosine), ``> warmup_steps``; None to set later.
        warmup_start_factor: multiplier of the LR at step 0, in ``[0, 1]``.
        min_lr_factor: multiplier of the LR at and after ``total_steps``, in ``[0, 1]``.
        last_epoch: index of the last step (``-1`` to start fresh), as in ``torch.optim.lr_scheduler``.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = WarmupCosineLR(opt, warmup_steps=2, total_steps=6)
        >>> lrs = []
        >>> for _ in range(7):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 3))
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]

    YAML (LightningCLI, for a module argument typed ``LRSchedulerCallable``):

    ```yaml
    lr_scheduler:
      class_path: lightning_reg.WarmupCosineLR
      init_args: {warmup_steps: 500, total_steps: 10000, min_lr_factor: 0.01}
    ```
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        warmup_start_factor: float = 0.0,
        min_lr_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}.")
        for label, value in (("warmup_start_factor", warmup_start_factor), ("min_lr_factor", min_lr_factor)):
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {value!r}.")
        self.warmup_steps = warmup_steps
        self.total_steps: int | None = None
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr_factor = float(min_lr_factor)
        if total_steps is not None:
            self.set_total_steps(total_steps)
        super().__init__(optimizer, last_epoch)

    def set_total_steps(self, total_steps: int | float) -> None:
        """Set the step at which the cosine ends (e.g. from ``trainer.estimated_stepping_batches``).

        Args:
            total_steps: total optimizer steps, ``> warmup_steps``; a whole float (what
                ``trainer.estimated_stepping_batches`` may return) counts as that int, ``inf`` is refused.

        Example:
            >>> import torch
            >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            >>> sched = WarmupCosineLR(opt, warmup_steps=10)
            >>> sched.set_total_steps(100)
        """
        if isinstance(total_steps, float) and math.isfinite(total_steps) and total_steps.is_integer():
            total_steps = int(total_steps)
        if (
            isinstance(total_steps, bool)
            or not isinstance(total_steps, int)
            or total_steps <= self.warmup_steps
        ):
            raise ValueError(
                f"total_steps must be an int > warmup_steps={self.warmup_steps}, got {total_steps!r} "
                "(an infinite run, e.g. max_steps=-1 and max_epochs=-1, needs an explicit total_steps)."
            )
        self.total_steps = total_steps

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base LR at ``step`` (see ``warmup_cosine_factor``).

        Args:
            step: optimizer steps taken so far.

        Returns:
            The multiplier.

        Example:
            >>> import torch
            >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            >>> WarmupCosineLR(opt, warmup_steps=4, total_steps=8).lr_factor(2)
            0.5
        """
        if self.total_steps is None:
            if step < self.warmup_steps or (step == 0 and self.warmup_steps == 0):
                return warmup_cosine_factor(step, self.warmup_steps, step + 1, self.warmup_start_factor)
            raise RuntimeError(
                "WarmupCosineLR.total_steps is unset: pass total_steps=... or call set_total_steps() "
                "(RegularizedModule does this from trainer.estimated_stepping_batches)."
            )
        return warmup_cosine_factor(
            step, self.warmup_steps, self.total_steps, self.warmup_start_factor, self.min_lr_factor
        )

    def get_lr(self) -> list[float | Tensor]:
        """Compute the learning rate of every param group at the current step.

        Returns:
            ``initial_lr * lr_factor(last_epoch)`` per group; groups added to the optimizer after the
            scheduler was built (e.g. by ``BackboneFinetuning``) keep their current ``lr``: whoever added
            them sets it (torch's schedulers fail on such groups instead).

        Example:
            >>> import torch
            >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
            >>> WarmupCosineLR(opt, warmup_steps=0, total_steps=4).get_last_lr()
            [2.0]
        """
        factor = self.lr_factor(self.last_epoch)
        scheduled: list[float | Tensor] = [float(base) * factor for base in self.base_lrs]
        added = self.optimizer.param_groups[len(scheduled):]
        return scheduled + [float(group["lr"]) for group in added]
