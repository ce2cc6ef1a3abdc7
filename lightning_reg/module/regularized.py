"""``RegularizedModule``: LightningModule mixin whose ``configure_optimizers`` builds weight-decay groups.

It composes the techniques' module sides: the decay / no-decay groups and layer decay of
``lightning_reg.weight_decay``, the penalty mixin of ``lightning_reg.penalties``, the batch-mixing mixin of
``lightning_reg.mixing`` and a preset's module side. Its settings are one ``RegularizationConfig``
(``lightning_reg.module.config``), validated once when the module is built.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_reg._shared.verbosity import say
from lightning_reg.mixing.mixers import BatchMixer
from lightning_reg.mixing.mixin import BatchMixingMixin
from lightning_reg.module._added_groups import DecaySplitOnAdd, follow_leader_lrs
from lightning_reg.module.config import RegularizationConfig
from lightning_reg.penalties.functional import WeightPenalty
from lightning_reg.penalties.mixin import PenaltyMixin
from lightning_reg.presets.module_side import check_preset_optimizer
from lightning_reg.presets.registry import Preset
from lightning_reg.weight_decay.groups import (
    DecayRule,
    block_layer_ids,
    canonical_parameters,
    describe_param_groups,
    validate_param_groups,
    weight_decay_param_groups,
)
from lightning_reg.weight_decay.schedulers import WarmupCosineLR

__all__ = ["RegularizedModule"]


class RegularizedModule(PenaltyMixin, BatchMixingMixin, LightningModule):
    """LightningModule base class / mixin: decay and no-decay parameter groups, layer decay, any optimizer.

    Subclass it instead of ``LightningModule`` (or list it before another LightningModule base) and pass the
    regularization arguments to ``super().__init__``; the default ``configure_optimizers`` then builds
    the groups of [`weight_decay_param_groups`][lightning_reg.weight_decay.groups.weight_decay_param_groups]
    from the model's own parameters (after
    the strategy wrapped it: DDP, DeepSpeed, FSDP with ``use_orig_params=True``), creates the optimizer and
    the optional scheduler, and reports the groups once on rank zero (``verbose``).
    Modules that cannot take constructor arguments call ``configure_regularization`` instead.

    **Its settings are one object**, ``regularization_config`` (a frozen ``RegularizationConfig``): the
    arguments are validated once, when the module is built, and the precedence between the sources of a
    value is settled there (the library's default < the optimizer's own configured value < the preset < the
    module's argument < an explicit component such as ``batch_mixer=``); see ``RegularizationConfig``.

    **One source of truth for ``lr`` and ``weight_decay``.** Every group carries the module's ``lr`` and
    ``weight_decay``, so the same values given to the optimizer (a ``functools.partial`` or, in a
    LightningCLI config, ``optimizer.init_args``) would be silently overridden: a conflicting value there
    is refused with a ``ValueError``. Set them on the module, or set the module's ``lr`` / ``weight_decay``
    to ``None`` to take the optimizer's. The optimizer's ``defaults`` are set to the configured values.

    **Parameter groups added later** (``BackboneFinetuning`` unfreezing a backbone, or any
    ``optimizer.add_param_group`` without ``param_names``) get the same treatment as the configured ones:
    a decay / no-decay split by the same [`DecayRule`][lightning_reg.weight_decay.groups.DecayRule], the
    configured
    ``weight_decay``, names (``<module prefix>_decay`` / ``_no_decay``) and ``param_names``. The sub-groups
    of one added group keep their lr ratios to the last one, which is the group ``BackboneFinetuning``
    updates each epoch. With ``layer_decay``, ``BackboneFinetuning`` derives the backbone's rate from
    ``param_groups[0]``, the lowest layer's rate; the added parameters get that rate times the ratio of
    their layer's scale to that group's scale.

    LightningCLI: type the same arguments in the subclass ``__init__`` and forward them; ``optimizer`` and
    ``lr_scheduler`` are ``OptimizerCallable`` / ``LRSchedulerCallable`` so YAML can choose any class
    (``class_path`` + ``init_args`` without ``params``/``optimizer``), and ``decay_rule`` is a mapping
    (``decay_rule: {embeddings: true, exclude: [head]}``). Do not also use the CLI's automatic
    ``--optimizer``: that replaces ``configure_optimizers`` and with it the groups.

    Explicit penalties and batch mixing come with it
    ([`PenaltyMixin`][lightning_reg.penalties.mixin.PenaltyMixin],
    [`BatchMixingMixin`][lightning_reg.mixing.mixin.BatchMixingMixin]): pass
    ``weight_penalty=WeightPenalty(...)`` for an
    L1/L2/elastic-net penalty on the same decayed parameters, and ``batch_mixer=BatchMixer(...)`` for
    Mixup/CutMix/label smoothing on the device (compute the loss with ``mixing_loss``). If you override
    ``on_fit_start``, ``on_before_optimizer_step``, ``on_save_checkpoint`` or ``on_load_checkpoint``, call
    ``super()`` in it; an ``on_before_optimizer_step`` that never calls ``super()`` is refused when a
    penalty is set. Mixing is applied on the way into ``training_step``, to the result of every batch hook
    (your ``on_after_batch_transfer`` or a DataModule's): the module overrides no data hook, so a
    ``LightningDataModule`` draws no warning.

    Layer-wise LR decay (``layer_decay``): the layer id of each parameter comes from ``get_layer_id``;
    the default is the BEiT/timm convention of
    [`block_layer_ids`][lightning_reg.weight_decay.groups.block_layer_ids] (stem,
    embeddings, class/position tokens: 0; block ``i``: ``i + 1``; final norm and head: ``num_blocks + 1``).
    Group ``lr = lr * layer_decay ** (L - 1 - layer_id)``.

    Args:
        *args: passed on to the next ``__init__`` in the MRO (cooperative mixin).
        optimizer: callable ``params -> Optimizer``; default ``torch.optim.AdamW``.
        lr: base learning rate put in every group; None keeps the optimizer's own ``lr`` (its default or
            its ``init_args``), which layer decay then scales.
        weight_decay: decay of the decayed groups (``>= 0``); the no-decay groups get 0. ``None``
            (default): the preset's value with a preset, else the optimizer's own configured value (its
            LightningCLI ``init_args`` or a ``functools.partial``), else ``DEFAULT_WEIGHT_DECAY`` (0.05).
        decay_rule: which parameters are kept out of weight decay
            ([`DecayRule`][lightning_reg.weight_decay.groups.DecayRule] or a
            mapping of its arguments; default ``DecayRule()``: biases, norms, per-channel scales, declared
            names).
        layer_decay: layer-wise LR decay factor in ``(0, 1]``; None disables it.
        lr_scheduler: callable ``optimizer -> scheduler`` (e.g.
            [`WarmupCosineLR`][lightning_reg.weight_decay.schedulers.WarmupCosineLR]); a
            ``WarmupCosineLR`` without ``total_steps`` gets ``trainer.estimated_stepping_batches``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``; None (default): ``"epoch"`` for
            ``ReduceLROnPlateau`` (its metric exists only after validation), ``"step"`` otherwise.
        lr_scheduler_monitor: metric a ``ReduceLROnPlateau`` watches.
        keep_param_names: keep each group's ``param_names`` in the optimizer (torch stores them in its
            ``state_dict``; groups added later get them too).
        weight_penalty: explicit L1/L2 penalty on the decayed parameters (None: none).
        batch_mixer: Mixup/CutMix/label-smoothing mixer for training batches (None: no mixing, or the
            preset's).
        preset: a regularization preset (``"mild"``, ``"medium"``, ``"strong"`` or a
            [`Preset`][lightning_reg.presets.registry.Preset]) for the module side: its weight decay (unless
            ``weight_decay`` is given; skipped with a note for optimizers without decoupled weight decay) and
            its label smoothing and Mixup/CutMix (unless ``batch_mixer`` is given; they need ``num_classes``
            and make training targets ``(B, K)`` probabilities: use ``mixing_loss``). The Trainer side
            comes from [`preset_callbacks`][lightning_reg.presets.callbacks.preset_callbacks].
        num_classes: number of classes (``>= 2``), for the preset's label smoothing and mixing.
        verbose: ``0`` quiet, ``1`` one line per fit naming the optimizer and the groups, ``2`` the group
            table.
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
        decay_rule: DecayRule | None = None,
        layer_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] | None = None,
        lr_scheduler_monitor: str = "val_loss",
        keep_param_names: bool = True,
        weight_penalty: WeightPenalty | None = None,
        batch_mixer: BatchMixer | None = None,
        preset: str | Preset | None = None,
        num_classes: int | None = None,
        verbose: int | bool = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.regularization_config: RegularizationConfig = RegularizationConfig.resolve(
            type(self),
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            decay_rule=decay_rule,
            layer_decay=layer_decay,
            lr_scheduler=lr_scheduler,
            lr_scheduler_interval=lr_scheduler_interval,
            lr_scheduler_monitor=lr_scheduler_monitor,
            keep_param_names=keep_param_names,
            preset=preset,
            num_classes=num_classes,
            verbose=verbose,
        )
        self.weight_penalty = weight_penalty
        self.batch_mixer = self.regularization_config.choose_batch_mixer(batch_mixer)
        self._layer_ids: dict[str, int] | None = None
        self._n_layers: int | None = None
        # read by PresetSummary: the preset's weight decay was switched off for this optimizer
        self._preset_weight_decay_skipped = False

    def configure_regularization(
        self,
        *,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float | None = 1e-3,
        weight_decay: float | None = 0.05,
        decay_rule: DecayRule | None = None,
        layer_decay: float | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] | None = None,
        lr_scheduler_monitor: str = "val_loss",
        keep_param_names: bool = True,
        verbose: int | bool = 1,
    ) -> None:
        """Set (or change) the regularization settings; same arguments as the constructor.

        The module's preset and ``num_classes`` stay as they are; a ``weight_decay`` given here is the
        module's own and wins over the preset's. The new ``regularization_config`` replaces the old one.

        Args:
            optimizer: callable ``params -> Optimizer``.
            lr: base learning rate, or None for the optimizer's own.
            weight_decay: decay of the decayed groups, ``>= 0``, or None for the preset's, else the
                optimizer's configured value, else ``DEFAULT_WEIGHT_DECAY``.
            decay_rule: which parameters are kept out of weight decay.
            layer_decay: layer-wise LR decay factor in ``(0, 1]`` or None.
            lr_scheduler: callable ``optimizer -> scheduler`` or None.
            lr_scheduler_interval: ``"step"``, ``"epoch"`` or None (by scheduler type).
            lr_scheduler_monitor: metric for ``ReduceLROnPlateau``.
            keep_param_names: keep ``param_names`` in the optimizer's groups.
            verbose: ``0``, ``1`` or ``2`` (see the class).

        Raises:
            TypeError: a value of the wrong type.
            ValueError: a value out of range, or ``lr`` / ``weight_decay`` set both here and (to another
                value) in the optimizer's bound arguments.

        Example:
            >>> import torch
            >>> m = RegularizedModule()
            >>> m.configure_regularization(optimizer=torch.optim.SGD, lr=0.1, weight_decay=1e-4)
            >>> m.regularization_config.weight_decay, m.regularization_config.weight_decay_source
            (0.0001, 'module')
        """
        current = self.regularization_config
        self.regularization_config = RegularizationConfig.resolve(
            type(self),
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            decay_rule=decay_rule,
            layer_decay=layer_decay,
            lr_scheduler=lr_scheduler,
            lr_scheduler_interval=lr_scheduler_interval,
            lr_scheduler_monitor=lr_scheduler_monitor,
            keep_param_names=keep_param_names,
            preset=current.preset,
            num_classes=current.num_classes,
            verbose=verbose,
        )
        self._layer_ids = None
        self._n_layers = None

    @property
    def lr(self) -> float | None:
        """The base learning rate of the groups (``None``: the optimizer's own); settable.

        The Tuner's learning-rate finder (``Tuner.lr_find``) writes its suggestion here, so the next
        ``configure_optimizers`` uses it. Setting it replaces ``regularization_config`` by a copy with the
        new ``lr`` (validated).

        Example:
            >>> m = RegularizedModule(lr=0.1)
            >>> m.lr = 0.02
            >>> m.regularization_config.lr
            0.02
        """
        return self.regularization_config.lr

    @lr.setter
    def lr(self, value: float | None) -> None:
        self.regularization_config = dataclasses.replace(self.regularization_config, lr=value)

    @property
    def decay_rule(self) -> DecayRule:
        """The ``DecayRule`` in force (penalties and ``ProximalL1`` default to it).

        Example:
            >>> RegularizedModule(decay_rule=DecayRule(embeddings=True)).decay_rule.embeddings
            True
        """
        return self.regularization_config.decay_rule

    @property
    def preset(self) -> Preset | None:
        """The preset of the module side (``None`` without one).

        ``PresetSummary`` and ``OverfittingMonitor`` read it; set it through the constructor.

        Example:
            >>> RegularizedModule(preset="mild", num_classes=3, verbose=0).preset.name
            'mild'
        """
        return self.regularization_config.preset

    def get_layer_id(self, name: str) -> int:
        """Return the layer id (for layer-wise LR decay) of parameter ``name`` (wrapper prefixes stripped).

        Override to impose your own layering; ids must be ``0 .. L-1`` with the head at ``L - 1``. The
        default is [`block_layer_ids`][lightning_reg.weight_decay.groups.block_layer_ids] of this module.

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
            self._layer_ids = block_layer_ids(self, include_frozen=True)
        return self._layer_ids[name]

    def _num_layers(self) -> int:
        """``L`` of the layer-decay formula: the largest id among the trainable parameters, plus one."""
        ids = [self.get_layer_id(n) for n, _ in canonical_parameters(self)]
        return max(ids, default=0) + 1

    def _layer_count(self) -> int:
        """``L`` as the configured groups used it (computed now if ``param_groups`` did not)."""
        return self._n_layers or self._num_layers()

    def param_groups(self) -> list[dict[str, Any]]:
        """Build the parameter groups from ``regularization_config`` (override to add your own edits).

        Returns:
            Groups as from
            [`weight_decay_param_groups`][lightning_reg.weight_decay.groups.weight_decay_param_groups].

        Example:
            >>> m = RegularizedModule(weight_decay=0.1)
            >>> m.fc = torch.nn.Linear(2, 2)
            >>> [g["param_names"] for g in m.param_groups()]
            [['fc.weight'], ['fc.bias']]
        """
        cfg = self.regularization_config
        self._layer_ids = None
        layer_decay = cfg.layer_decay
        self._n_layers = self._num_layers() if layer_decay is not None else None
        with warnings.catch_warnings(record=True) as caught:  # relay on rank zero only (not once per rank)
            warnings.simplefilter("always")
            groups = weight_decay_param_groups(
                self,
                # weight_decay=None: the optimizer's own; built with 0 and set after construction
                cfg.weight_decay if cfg.weight_decay is not None else 0.0,
                rule=cfg.decay_rule,
                layer_decay=layer_decay,
                # layer decay with the optimizer's own lr: build with lr=1 and rescale after construction
                lr=cfg.lr if cfg.lr is not None or layer_decay is None else 1.0,
                layer_id_fn=self.get_layer_id if layer_decay is not None else None,
                num_layers=self._n_layers if layer_decay is not None else None,
            )
        for w in caught:
            rank_zero_warn(str(w.message), category=w.category)
        return groups

    def configure_optimizers(self) -> Any:
        """Create the optimizer over ``param_groups`` and the optional scheduler.

        Returns:
            ``{"optimizer": opt}``, or with a scheduler
            ``{"optimizer": opt, "lr_scheduler": {"scheduler": ..., "interval": ..., "monitor": ...}}``,
            as Lightning expects.

        Raises:
            ValueError: if a parameter is in two groups or a trainable one in none (edited groups).

        Example:
            >>> m = RegularizedModule(lr=0.1)
            >>> m.fc = torch.nn.Linear(2, 2)
            >>> type(m.configure_optimizers()["optimizer"]).__name__
            'AdamW'
        """
        cfg = self.regularization_config
        self._check_penalty_hook_chain()
        groups = self.param_groups()
        validate_param_groups(groups, self)
        if not cfg.keep_param_names:
            groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
        optimizer = cfg.optimizer(groups)
        self._settle_optimizer(optimizer, cfg)
        # groups added later (BackboneFinetuning) get the same split, names and settings
        split = DecaySplitOnAdd(optimizer, self, cfg, self.get_layer_id, self._layer_count)
        object.__setattr__(optimizer, "add_param_group", split)
        optimizer.register_step_pre_hook(follow_leader_lrs)
        self.param_group_report = describe_param_groups(optimizer.param_groups)
        self._report_groups(optimizer)
        if cfg.lr_scheduler is None:
            return {"optimizer": optimizer}
        scheduler_config = self._lr_scheduler_config(optimizer, cfg.lr_scheduler)
        return {"optimizer": optimizer, "lr_scheduler": scheduler_config}

    def _settle_optimizer(self, optimizer: Optimizer, cfg: RegularizationConfig) -> None:
        """Fill in the values left to the optimizer, and put the configured ones into its ``defaults``.

        A preset's weight decay is switched off (with a note) for an optimizer without decoupled weight decay.
        """
        self._preset_weight_decay_skipped = False
        if cfg.weight_decay_source == "preset" and cfg.preset is not None:  # a "preset" source has one
            applies = check_preset_optimizer(optimizer, cfg.preset, cfg.verbose)
            self._preset_weight_decay_skipped = not applies
        if cfg.layer_decay is not None and cfg.lr is None:
            base = optimizer.defaults["lr"]
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = float(base) * group["lr_scale"]
        if cfg.weight_decay is None:
            own = float(optimizer.defaults.get("weight_decay", 0.0))
            for group in optimizer.param_groups:
                if not str(group.get("name", "")).endswith("no_decay"):
                    group["weight_decay"] = own
        else:
            optimizer.defaults["weight_decay"] = cfg.weight_decay
        if cfg.lr is not None:
            optimizer.defaults["lr"] = cfg.lr

    def _lr_scheduler_config(
        self, optimizer: Optimizer, make_scheduler: LRSchedulerCallable
    ) -> dict[str, Any]:
        """Build the configured scheduler and Lightning's scheduler config (interval, monitor)."""
        cfg = self.regularization_config
        scheduler = make_scheduler(optimizer)
        interval = cfg.lr_scheduler_interval
        if interval is None:
            interval = "epoch" if isinstance(scheduler, ReduceLROnPlateau) else "step"
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            self._fill_total_steps(scheduler, by_step=interval == "step")
        config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = cfg.lr_scheduler_monitor
        return config

    def _fill_total_steps(self, scheduler: WarmupCosineLR, by_step: bool) -> None:
        """Give a ``WarmupCosineLR`` without ``total_steps`` the length of this run."""
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("WarmupCosineLR without total_steps needs a Trainer attached")
        # When resuming, the checkpoint's scheduler state brings total_steps. Do not ask for
        # estimated_stepping_batches then: it builds the train dataloader before Lightning restores the
        # loops, and Lightning then never loads a stateful dataloader's state (mid-epoch resume would
        # restart the epoch's data from its first batch).
        if getattr(trainer, "ckpt_path", None) is not None:
            return
        # Lightning turns an unset max_epochs into 1000 or -1 (infinite, refused by set_total_steps)
        total: int | float = (
            trainer.estimated_stepping_batches
            if by_step
            else (trainer.max_epochs if trainer.max_epochs is not None else -1)
        )
        fast_dev_run = trainer.fast_dev_run  # type: ignore[attr-defined]  # Lightning sets it; Trainer omits it
        if fast_dev_run and total <= scheduler.warmup_steps:
            total = scheduler.warmup_steps + 1  # a smoke test: the schedule's shape does not matter
        elif 0 < total <= scheduler.warmup_steps:
            raise ValueError(
                f"WarmupCosineLR: warmup_steps={scheduler.warmup_steps} is not shorter than this run"
                f" ({total} {'optimizer steps' if by_step else 'epochs'} estimated by the Trainer);"
                " lower warmup_steps or train longer."
            )
        if total != 0:  # 0: a zero-length train dataloader; Lightning warns and trains nothing
            scheduler.set_total_steps(total)

    def _report_groups(self, optimizer: Optimizer) -> None:
        verbose = self.regularization_config.verbose
        if verbose >= 2:
            say(verbose, 2, f"{type(self).__name__}: {type(optimizer).__name__} parameter groups\n"
                f"{self.param_group_report}")
            return
        parts = []
        for g in optimizer.param_groups:
            wd = g.get("weight_decay", 0.0)
            parts.append(f"{g.get('name', '?')} {len(g['params'])} tensors (wd {wd:g})")
        shown = parts if len(parts) <= 4 else [*parts[:3], f"... {len(parts)} groups"]
        say(verbose, 1, f"{type(self).__name__}: {type(optimizer).__name__}, " + "; ".join(shown)
            + " (verbose=2: the table).")
