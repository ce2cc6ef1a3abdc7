"""Freeze BatchNorm layers for real: eval mode that survives ``model.train()``, no stat or affine updates.

A BatchNorm layer is only frozen when (1) it normalises with its running statistics and stops updating
them, which needs ``eval()`` mode, and (2) its affine ``weight``/``bias`` receive no optimizer updates.
Lightning's ``BaseFinetuning.freeze`` sets ``requires_grad=False`` and calls ``eval()`` once, but the next
``model.train()`` (Lightning calls it at the start of every training epoch and after every validation)
puts the layers back into train mode, so the running statistics keep moving and the normalisation uses
batch statistics again. [`freeze_batchnorm`][lightning_reg.batchnorm.functional.freeze_batchnorm] pins each
layer's mode instead: it overrides ``train``
on the layer *instance* (so ``model.train()`` leaves it in eval mode and ``layer.training`` stays
``False``) and adds a forward pre-hook that restores eval mode if someone assigns ``training = True``
directly (as Lightning's ``_ModuleMode.restore`` does). The module keeps its class, its parameters and
its ``state_dict`` keys, unlike replacing layers by ``torchvision.ops.FrozenBatchNorm2d`` (timm's
``freeze_batch_norm_2d``), so optimizers, checkpoints and DDP wrappers built before freezing stay valid,
and [`unfreeze_batchnorm`][lightning_reg.batchnorm.functional.unfreeze_batchnorm] undoes everything.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "batchnorm_layers",
    "freeze_batchnorm",
    "frozen_batchnorm_parameters",
    "is_frozen_batchnorm",
    "unfreeze_batchnorm",
]

_STATE = "_lightning_reg_frozen_bn"


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """List the BatchNorm layers in ``module`` (itself included): ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``.

    Args:
        module: any module.

    Example:
        >>> len(batchnorm_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())))
        1
    """
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def is_frozen_batchnorm(layer: nn.Module) -> bool:
    """Tell whether ``layer`` was frozen by ``freeze_batchnorm`` (and not unfrozen since).

    Args:
        layer: a module.

    Example:
        >>> bn = nn.BatchNorm1d(3)
        >>> _ = freeze_batchnorm(bn)
        >>> is_frozen_batchnorm(bn)
        True
    """
    return _STATE in layer.__dict__


def _frozen_train(layer: nn.Module, mode: bool = True) -> nn.Module:
    # Replaces ``layer.train``: whatever the requested mode, the frozen layer itself stays in eval mode;
    # its children (e.g. a DropPath that ``attach_drop_path`` placed inside it) follow ``mode`` as usual.
    if not isinstance(mode, bool):
        raise ValueError("training mode is expected to be boolean")
    layer.training = False
    for child in layer.children():
        child.train(mode)
    return layer


def _force_eval(layer: nn.Module, args: Any) -> None:
    # Forward pre-hook: undo a direct ``layer.training = True`` before the layer normalises anything.
    if layer.training:
        layer.training = False


def freeze_batchnorm(module: nn.Module, *, affine: bool = True) -> list[_BatchNorm]:
    """Freeze every BatchNorm layer in ``module``: eval mode pinned, statistics and (optionally) affine fixed.

    After this, each layer normalises with its running statistics in ``train()`` and ``eval()`` alike
    (identical outputs), never updates them, and stays in eval mode after ``module.train()``; modules
    placed inside a layer (such as the ``DropPath`` of
    [`add_stochastic_depth`][lightning_reg.stochastic_depth.layers.add_stochastic_depth]) still
    follow ``train()``/``eval()``. With
    ``affine=True`` its ``weight``/``bias`` get ``requires_grad=False`` and their ``.grad`` is cleared, so
    optimizers skip them entirely: no gradient step, no weight decay, no momentum carried over (PyTorch
    optimizers skip parameters whose ``.grad`` is ``None``). Gradients still flow *through* the layers.
    Layers frozen already are left as they are. Inside a ``DistributedDataParallel`` model built before
    freezing, use ``affine=False`` and drop the affine gradients before the optimizer step instead (the
    [`FreezeBatchNorm`][lightning_reg.batchnorm.callback.FreezeBatchNorm] callback does this), because DDP
    expects a gradient
    for every parameter that required one when it was wrapped.

    Args:
        module: the model (or a single BatchNorm layer).
        affine: also stop training the affine parameters.

    Returns:
        The layers frozen by this call.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        >>> _ = freeze_batchnorm(net)
        >>> _ = net.train()
        >>> net[1].training, net[1].weight.requires_grad
        (False, False)
    """
    frozen = []
    for layer in batchnorm_layers(module):
        if is_frozen_batchnorm(layer):
            continue
        requires_grad = {name: p.requires_grad for name, p in layer.named_parameters(recurse=False)}
        if affine:
            for p in layer.parameters(recurse=False):
                p.requires_grad_(False)
                p.grad = None
        hook = layer.register_forward_pre_hook(_force_eval)
        layer.training = False
        # an instance attribute shadows ``nn.Module.train`` for this layer only (picklable: a partial of a
        # module-level function), so the recursive ``model.train()`` leaves it in eval mode
        object.__setattr__(layer, "train", functools.partial(_frozen_train, layer))
        object.__setattr__(
            layer, _STATE, {"requires_grad": requires_grad, "hook_id": hook.id, "affine": affine}
        )
        frozen.append(layer)
    return frozen


def unfreeze_batchnorm(module: nn.Module) -> list[_BatchNorm]:
    """Undo ``freeze_batchnorm``: restore ``requires_grad``, the normal ``train`` and the parent's mode.

    Args:
        module: the model (or a single layer) passed to
            [`freeze_batchnorm`][lightning_reg.batchnorm.functional.freeze_batchnorm].

    Returns:
        The layers unfrozen by this call.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        >>> _ = freeze_batchnorm(net)
        >>> _ = unfreeze_batchnorm(net)
        >>> net[1].training, net[1].weight.requires_grad
        (True, True)
    """
    unfrozen = []
    for layer in batchnorm_layers(module):
        if not is_frozen_batchnorm(layer):
            continue
        state = layer.__dict__.pop(_STATE)
        layer.__dict__.pop("train", None)
        layer._forward_pre_hooks.pop(state["hook_id"], None)
        for name, p in layer.named_parameters(recurse=False):
            p.requires_grad_(state["requires_grad"].get(name, p.requires_grad))
        layer.train(module.training)
        unfrozen.append(layer)
    return unfrozen


def frozen_batchnorm_parameters(module: nn.Module) -> list[torch.nn.Parameter]:
    """List the affine parameters of the frozen BatchNorm layers in ``module``.

    Args:
        module: any module.

    Example:
        >>> bn = nn.BatchNorm1d(3)
        >>> _ = freeze_batchnorm(bn, affine=False)
        >>> len(frozen_batchnorm_parameters(bn))
        2
    """
    return [
        p for layer in batchnorm_layers(module) if is_frozen_batchnorm(layer) for p in layer.parameters(False)
    ]
