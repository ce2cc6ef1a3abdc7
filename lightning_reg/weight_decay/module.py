"""``RegularizedModule``: LightningModule mixin whose ``configure_optimizers`` builds weight-decay groups."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_reg.mixing.core import BatchMixer
from lightning_reg.mixing.mixin import BatchMixingMixin
from lightning_reg.penalties.core import WeightPenalty
from lightning_reg.penalties.mixin import PenaltyMixin
from lightning_reg.presets.core import Preset
from lightning_reg.presets.module_side import _check_preset_optimizer, _resolve_module_preset
from lightning_reg.weight_decay.groups import (
    _check_weight_decay,
    block_layer_ids,
    describe_param_groups,
    validate_param_groups,
    weight_decay_param_groups,
)
from lightning_reg.weight_decay.schedulers import WarmupCosineLR

__all__ = ["RegularizedModule"]


class RegularizedModule(PenaltyMixin, BatchMixingMixin, LightningModule):
    """LightningModule base class / mixin: decay and no-decay parameter groups, layer decay, any optimizer.

    Subclass it instead of ``LightningModule`` (or list it before another LightningModule base) and pass the
    regularization arguments to ``super().__init__``; the default :meth:`configure_optimizers` then builds
    the groups of :func:`~lightning_reg.weight_decay_param_groups` from the model's own parameters (after
    the strategy wrapped it: DDP, DeepSpeed, FSDP with ``use_orig_params=True``), creates the optimizer and
    the optional scheduler, and logs :func:`~lightning_reg.describe_param_groups` once on rank zero.
    Modules that cannot take constructor arguments call :meth:`configure_regularization` instead.

    LightningCLI: type the same arguments in the subclass ``__init__`` and forward them; ``optimizer`` and
    ``lr_scheduler`` are ``OptimizerCallable`` / ``LRSchedulerCallable`` so YAML can choose any class
    (``class_path`` + ``init_args`` without ``params``/``optimizer``). Do not also use the CLI's automatic
    ``--optimizer``: that replaces ``configure_optimizers`` and with it the groups.

    Explicit penalties and batch mixing come with it (:class:`~lightning_reg.penalties.PenaltyMixin`,
    :class:`~lightning_reg.mixing.BatchMixingMixin`): pass ``weight_penalty=WeightPenalty(...)`` for an
    L1/L2/elastic-net penalty on the same decayed parameters, and ``batch_mixer=BatchMixer(...)`` for
    Mixup/CutMix/label smoothing on the device (compute the loss with :meth:`mixing_loss`). If you override
    ``on_fit_start``, ``on_before_optimizer_step``, ``on_save_checkpoint`` or ``on_load_checkpoint``, call
    ``super()`` in it (your ``on_after_batch_transfer`` needs nothing: mixing is applied to its result).

    Layer-wise LR decay (``layer_decay``): the layer id of each parameter comes from :meth:`get_layer_id`;
    the default is the BEiT/timm convention of
    :func:`~lightning_reg.weight_decay.groups.block_layer_ids` (stem,
    embeddings, class/position tokens: 0; block ``i``: ``i + 1``; final norm and head: ``num_blocks + 1``).
    Group ``lr = lr * layer_decay ** (L - 1 - layer_id)``.

    Args:
        *args: passed on to the next ``__init__`` in the MRO (cooperative mixin).
        optimizer: callable ``params -> Optimizer``; default ``torch.optim.AdamW``.
        lr: base learning rate put in every group; None keeps the optimizer's own ``lr`` (its default or
            its ``init_args``), which layer decay then scales.
        weight_decay: decay of the decayed groups (``>= 0``); the no-decay groups get 0. ``None`` (default):
            the preset's value, or 0.05 without a preset.
        exclude_bias: keep biases out of weight decay.
        exclude_norm: keep normalization parameters out of weight decay.
        exclude_embeddings: keep embeddings and class/position tokens out of weight decay.
        exclude: glob patterns of further parameter names (wrapper prefixes stripped) to keep out.
        layer_decay: layer-wise LR decay factor in ``(0, 1]``; None disables it.
        lr_scheduler: callable ``optimizer -> scheduler`` (e.g. :class:`~lightning_reg.WarmupCosineLR`); a
            ``WarmupCosineLR`` without ``total_steps`` gets ``trainer.estimated_stepping_batches``.
        lr_scheduler_interval: ``"step"`` (default) or ``"epoch"``.
        lr_scheduler_monitor: metric a ``ReduceLROnPlateau`` watches.
        keep_param_names: keep each group's ``param_names`` in the optimizer (torch stores them in its
            ``state_dict``). torch then refuses ``add_param_group`` calls without names, e.g. Lightning's
            ``BackboneFinetuning`` unfreezing a frozen backbone: set False for those.
        weight_penalty: explicit L1/L2 penalty on the decayed parameters (None: none).
        batch_mixer: Mixup/CutMix/label-smoothing mixer for training batches (None: no mixing, or the
            preset's).
        preset: a regularization preset (``"mild"``, ``"medium"``, ``"strong"`` or a
            :class:`~lightning_reg.presets.Preset`) for the module side: its weight decay (unless
            ``weight_decay`` is given; skipped with a note for optimizers without decoupled weight decay) and
            its label smoothing and Mixup/CutMix (unless ``batch_mixer`` is given; they need ``num_classes``
            and make training targets ``(B, K)`` probabilities: use :meth:`mixing_loss`). The Trainer side
            comes from :func:`~lightning_reg.preset_callbacks`.
        num_classes: number of classes, for the preset's label smoothing and mixing.
        **kwargs: passed on to the next ``__init__`` in the MRO.

    Example:
        >>> import torch, lightning as L
        >>> from lightning_reg import RegularizedModule
        >>> class Net(RegularizedModule):
        ...     def __init__(self, lr: float = 1e-2, weight_decay: float = 0.05) -> None:
        ...         super().__init__(lr=lr, weight_decay=weight_decay)
        ...         self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.net(x), y)
        >>> opt = Net().configure_optimizers()["optimizer"]
        >>> [(g["name"], len(g["params"]), g["weight_decay"]) for g in opt.param_groups]
        [('decay', 1, 0.05), ('no_decay', 3, 0.0)]
    """

    def __init__(
        self,
        *args: Any,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = 1e-3,
        weight_decay: float | None = None,
        exclude_bias: bool = True,
        exclude_norm: bool = True,
        exclude_embeddings: bool = False,
        exclude: Sequence[str] = (),
        layer_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        lr_scheduler_monitor: str = "val_loss",
        keep_param_names: bool = True,
        weight_penalty: WeightPenalty | None = None,
        batch_mixer: BatchMixer | None = None,
        preset: str | Preset | None = None,
        num_classes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.preset, weight_decay, batch_mixer, self._preset_weight_decay = _resolve_module_preset(
            preset, num_classes=num_classes, weight_decay=weight_decay, batch_mixer=batch_mixer
        )
        self.weight_penalty = weight_penalty
        self.batch_mixer = batch_mixer
        self.configure_regularization(
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            exclude_bias=exclude_bias,
            exclude_norm=exclude_norm,
            exclude_embeddings=exclude_embeddings,
            exclude=exclude,
            layer_decay=layer_decay,
            lr_scheduler=lr_scheduler,
            lr_scheduler_interval=lr_scheduler_interval,
            lr_scheduler_monitor=lr_scheduler_monitor,
            keep_param_names=keep_param_names,
        )

    def configure_regularization(
        self,
        *,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = 1e-3,
        weight_decay: float = 0.05,
        exclude_bias: bool = True,
        exclude_norm: bool = True,
        exclude_embeddings: bool = False,
        exclude: Sequence[str] = (),
        layer_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        lr_scheduler_monitor: str = "val_loss",
        keep_param_names: bool = True,
    ) -> None:
        """Set (or change) the regularization settings; same arguments as the constructor.

        Args:
            optimizer: callable ``params -> Optimizer``.
            lr: base learning rate, or None for the optimizer's own.
            weight_decay: decay of the decayed groups, ``>= 0``.
            exclude_bias: keep biases out of weight decay.
            exclude_norm: keep normalization parameters out of weight decay.
            exclude_embeddings: keep embeddings and tokens out of weight decay.
            exclude: further glob patterns of parameter names to keep out.
            layer_decay: layer-wise LR decay factor in ``(0, 1]`` or None.
            lr_scheduler: callable ``optimizer -> scheduler`` or None.
            lr_scheduler_interval: ``"step"`` or ``"epoch"``.
            lr_scheduler_monitor: metric for ``ReduceLROnPlateau``.
            keep_param_names: keep ``param_names`` in the optimizer's groups.

        Raises:
            ValueError: naming the bad value and the valid range or choices.

        Example:
            >>> import torch
            >>> m = RegularizedModule()
            >>> m.configure_regularization(optimizer=torch.optim.SGD, lr=0.1, weight_decay=1e-4)
        """
        _check_weight_decay(weight_decay)
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0):
            raise ValueError(f"lr must be a number >= 0 or None, got {lr!r}.")
        if layer_decay is not None and (
            isinstance(layer_decay, bool)
            or not isinstance(layer_decay, (int, float))
            or not 0 < layer_decay <= 1
        ):
            raise ValueError(f"layer_decay must be in (0, 1] (or None to disable), got {layer_decay!r}.")
        if lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"lr_scheduler_interval must be 'step' or 'epoch', got {lr_scheduler_interval!r}."
            )
        if not callable(optimizer):
            raise ValueError(f"optimizer must be a callable params -> Optimizer, got {optimizer!r}.")
        if lr_scheduler is not None and not callable(lr_scheduler):
            raise ValueError(
                f"lr_scheduler must be a callable optimizer -> scheduler or None, got {lr_scheduler!r}."
            )
        if isinstance(exclude, str):
            exclude = [exclude]
        self.regularization_config: dict[str, Any] = {
            "optimizer": optimizer,
            "lr": None if lr is None else float(lr),
            "weight_decay": float(weight_decay),
            "exclude_bias": bool(exclude_bias),
            "exclude_norm": bool(exclude_norm),
            "exclude_embeddings": bool(exclude_embeddings),
            "exclude": list(exclude),
            "layer_decay": None if layer_decay is None else float(layer_decay),
            "lr_scheduler": lr_scheduler,
            "lr_scheduler_interval": lr_scheduler_interval,
            "lr_scheduler_monitor": lr_scheduler_monitor,
            "keep_param_names": bool(keep_param_names),
        }
        self._layer_ids: dict[str, int] | None = None

    def get_layer_id(self, name: str) -> int:
        """Return the layer id (for layer-wise LR decay) of parameter ``name`` (wrapper prefixes stripped).

        Override to impose your own layering; ids must be ``0 .. L-1`` with the head at ``L - 1``. The
        default is :func:`~lightning_reg.weight_decay.groups.block_layer_ids` of this module.

        Args:
            name: parameter name relative to this LightningModule, e.g. ``"net.blocks.3.attn.qkv.weight"``.

        Returns:
            The layer id.

        Example:
            >>> m = RegularizedModule()
            >>> m.stem = torch.nn.Linear(2, 2)
            >>> m.blocks = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
            >>> m.head = torch.nn.Linear(2, 1)
            >>> [m.get_layer_id(n) for n in ("stem.weight", "blocks.0.bias", "blocks.1.weight", "head.bias")]
            [0, 1, 2, 3]
        """
        if self._layer_ids is None:
            self._layer_ids = block_layer_ids(self)
        return self._layer_ids[name]

    def param_groups(self) -> list[dict[str, Any]]:
        """Build the parameter groups from :attr:`regularization_config` (override to add your own edits).

        Returns:
            Groups as from :func:`~lightning_reg.weight_decay_param_groups`.

        Example:
            >>> m = RegularizedModule(weight_decay=0.1)
            >>> m.fc = torch.nn.Linear(2, 2)
            >>> [g["param_names"] for g in m.param_groups()]
            [['fc.weight'], ['fc.bias']]
        """
        cfg = self.regularization_config
        self._layer_ids = None
        layer_decay = cfg["layer_decay"]
        with warnings.catch_warnings(record=True) as caught:  # relay on rank zero only (not once per rank)
            warnings.simplefilter("always")
            groups = weight_decay_param_groups(
                self,
                cfg["weight_decay"],
                exclude_bias=cfg["exclude_bias"],
                exclude_norm=cfg["exclude_norm"],
                exclude_embeddings=cfg["exclude_embeddings"],
                exclude=cfg["exclude"],
                layer_decay=layer_decay,
                # layer decay with the optimizer's own lr: build with lr=1 and rescale after construction
                lr=cfg["lr"] if cfg["lr"] is not None or layer_decay is None else 1.0,
                layer_id_fn=self.get_layer_id if layer_decay is not None else None,
            )
        for w in caught:
            rank_zero_warn(str(w.message), category=w.category)
        return groups

    def configure_optimizers(self) -> Any:
        """Create the optimizer over :meth:`param_groups` and the optional scheduler.

        Returns:
            ``{"optimizer": opt}`` or ``{"optimizer": opt, "lr_scheduler": {"scheduler": ..., "interval":
            ..., "monitor": ...}}`` as Lightning expects.

        Raises:
            ValueError: if a parameter is in two groups or a trainable one in none (edited groups).

        Example:
            >>> m = RegularizedModule(lr=0.1)
            >>> m.fc = torch.nn.Linear(2, 2)
            >>> type(m.configure_optimizers()["optimizer"]).__name__
            'AdamW'
        """
        cfg = self.regularization_config
        groups = self.param_groups()
        validate_param_groups(groups, self)
        if not cfg["keep_param_names"]:
            groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
        optimizer = cfg["optimizer"](groups)
        preset = getattr(self, "preset", None)
        if isinstance(preset, Preset) and getattr(self, "_preset_weight_decay", False):
            _check_preset_optimizer(optimizer, preset)
        if cfg["layer_decay"] is not None and cfg["lr"] is None:
            base = optimizer.defaults["lr"]
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = float(base) * group["lr_scale"]
        self.param_group_report = describe_param_groups(optimizer.param_groups)
        rank_zero_info(
            f"{type(self).__name__}: {type(optimizer).__name__} parameter groups\n{self.param_group_report}"
        )
        if cfg["lr_scheduler"] is None:
            return {"optimizer": optimizer}
        scheduler = cfg["lr_scheduler"](optimizer)
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            trainer = self._trainer
            if trainer is None:
                raise RuntimeError("WarmupCosineLR without total_steps needs a Trainer attached")
            by_step = cfg["lr_scheduler_interval"] == "step"
            # When resuming, the checkpoint's scheduler state brings total_steps. Do not ask for
            # estimated_stepping_batches then: it builds the train dataloader before Lightning restores the
            # loops, and Lightning then never loads a stateful dataloader's state (mid-epoch resume would
            # restart the epoch's data from its first batch).
            if getattr(trainer, "ckpt_path", None) is None:
                total = trainer.estimated_stepping_batches if by_step else trainer.max_epochs
                if trainer.fast_dev_run and total <= scheduler.warmup_steps:
                    total = scheduler.warmup_steps + 1  # a smoke test: the schedule's shape does not matter
                elif 0 < total <= scheduler.warmup_steps:
                    raise ValueError(
                        f"WarmupCosineLR: warmup_steps={scheduler.warmup_steps} is not shorter than this run"
                        f" ({total} {'optimizer steps' if by_step else 'epochs'} estimated by the Trainer);"
                        " lower warmup_steps or train longer."
                    )
                if total != 0:  # 0: a zero-length train dataloader; Lightning warns and trains nothing
                    scheduler.set_total_steps(total)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": cfg["lr_scheduler_interval"]}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = cfg["lr_scheduler_monitor"]
        return {"optimizer": optimizer, "lr_scheduler": config}
