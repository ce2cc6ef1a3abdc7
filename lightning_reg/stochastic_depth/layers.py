"""Stochastic depth in pure PyTorch: ``drop_path``, ``DropPath`` and model surgery.

* [`drop_path`][lightning_reg.stochastic_depth.layers.drop_path] /
  [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath] drop the residual branch per sample
  (``mode="row"``) or for the
  whole batch (``mode="batch"``) with inverted scaling. They draw exactly the random numbers
  ``torchvision.ops.stochastic_depth`` and timm's ``drop_path`` draw, so the same RNG state gives the
  same result.
* [`add_stochastic_depth`][lightning_reg.stochastic_depth.layers.add_stochastic_depth] inserts
  [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath] into residual branches of a model built
  without it (torchvision's ResNet blocks and ViT ``EncoderBlock``, torch's ``nn.TransformerEncoderLayer``
  and ``nn.TransformerDecoderLayer`` out of the box, any user block through ``branch_ends``) without
  adding parameters or buffers: state_dict keys are unchanged, so checkpoints of the unmodified model
  load, and eval-mode outputs are bitwise unchanged.
* [`attach_drop_path`][lightning_reg.stochastic_depth.layers.attach_drop_path] is the building block: it makes
  one submodule's output (the last layer of a
  residual branch) pass through a [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath].

Example:
    >>> import torch
    >>> layer = DropPath(0.5)
    >>> layer.eval()(torch.ones(2, 3)).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx
from torch import Tensor, nn

from lightning_reg._shared.validation import check_bool, check_choice, check_number
from lightning_reg.stochastic_depth.rate_rules import DepthRule, depth_rates

__all__ = [
    "DEFAULT_BRANCH_ENDS",
    "BranchEnd",
    "DropPath",
    "DropRateSite",
    "add_stochastic_depth",
    "attach_drop_path",
    "drop_path",
    "find_drop_rate_modules",
    "sequence_first_layers",
]

_MODES: tuple[Literal["row", "batch"], ...] = ("row", "batch")


def _check_rate_tensor(p: Tensor) -> None:
    if p.ndim != 0 or not p.is_floating_point():
        raise TypeError(
            f"`p` must be a number in [0, 1] or a 0-d floating-point tensor; got a tensor of shape"
            f" {tuple(p.shape)} and dtype {p.dtype}."
        )


def drop_path(
    x: Tensor,
    p: float | Tensor,
    *,
    training: bool = True,
    mode: Literal["row", "batch"] = "row",
    scale_by_keep: bool = True,
) -> Tensor:
    """Zero the residual-branch output ``x`` per sample (or for the whole batch) with probability ``p``.

    Kept samples are divided by ``1 - p`` (``scale_by_keep=True``) so the expectation is unchanged.
    Gradients flow only through kept samples. Same random draws as
    ``torchvision.ops.stochastic_depth(x, p, mode, training)`` and timm's ``drop_path``.

    Everything after ``p`` is keyword-only: torchvision's ``stochastic_depth(input, p, mode, training)``
    and timm's ``drop_path(x, drop_prob, training)`` order their arguments differently, so a positional
    call ported from either is refused instead of silently running another mode.

    ``p`` is a Python number or a 0-d floating-point tensor:

    * a **number** is validated; with ``training=False`` or ``p == 0`` the input itself is returned (no
      copy, no random draw);
    * a **tensor** (a rate updated in place, as
      [`StochasticDepthScheduler`][lightning_reg.stochastic_depth.callback.StochasticDepthScheduler] does
      while it schedules a model) is read only by tensor operations: no host sync, no branch on its
      value, so ``torch.compile`` builds one graph for every rate. Its value is not checked (that would
      need a sync) and must be in ``[0, 1)``; the mask is drawn even when it is 0. With a float64 tensor the
      draws equal those of the same rate given as a number (on CPU, torch < 2.7 on Intel processors draws
      a number rate from MKL's generator instead: the same distribution, other masks).

    The function is a ``torch.fx`` leaf (``torch.fx.wrap``, as torchvision wraps ``stochastic_depth``):
    symbolic tracing, and so ``torchvision.models.feature_extraction``, records one ``drop_path`` node.

    Args:
        x: tensor of shape ``[N, ...]`` (batch first).
        p: drop probability in ``[0, 1]``, or a 0-d floating-point tensor holding it.
        training: apply dropping only when ``True``.
        mode: ``"row"``: one draw per sample; ``"batch"``: one draw for the whole batch.
        scale_by_keep: divide kept values by ``1 - p``.

    Returns:
        A tensor like ``x``.

    Raises:
        TypeError: ``p`` is neither a number nor a 0-d floating-point tensor, or ``training`` or
            ``scale_by_keep`` is not a bool.
        ValueError: a number ``p`` outside ``[0, 1]`` or an unknown ``mode``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> y = drop_path(torch.ones(4, 2), 0.5, mode="row")
        >>> sorted(set(y.flatten().tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
        >>> drop_path(torch.ones(4, 2), 0.5, "batch")  # torchvision's argument order is refused
        Traceback (most recent call last):
        ...
        TypeError: drop_path() takes 2 positional arguments but 3 were given
    """
    # the validators' fast paths: plain comparisons, ~0.2 us per call instead of a few (runs every forward)
    if training is not True and training is not False:
        check_bool("training", training)
    if mode != "row" and mode != "batch":
        check_choice("mode", mode, _MODES)
    if scale_by_keep is not True and scale_by_keep is not False:
        check_bool("scale_by_keep", scale_by_keep)
    if isinstance(p, Tensor):
        _check_rate_tensor(p)
        if not training:
            return x
        return _drop_path_tensor_rate(x, p, mode, scale_by_keep)
    if type(p) is not float or not 0.0 <= p <= 1.0:
        p = check_number("p", p, low=0.0, high=1.0)
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    noise = x.new_empty(_noise_shape(x, mode)).bernoulli_(keep)
    if scale_by_keep and keep > 0.0:
        noise.div_(keep)
    return x * noise


torch.fx.wrap("drop_path")


def _noise_shape(x: Tensor, mode: str) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.ndim - 1) if mode == "row" else (1,) * x.ndim


def _drop_path_tensor_rate(x: Tensor, p: Tensor, mode: str, scale_by_keep: bool) -> Tensor:
    """Draw as ``drop_path`` does, with the rate in a tensor: only tensor ops, no branch on its value."""
    keep = 1.0 - p
    noise = x.new_empty(_noise_shape(x, mode)).bernoulli_(keep)
    if scale_by_keep:
        # keep > 0 for every scheduled rate; the clamp keeps a (refused) rate of 1 from giving 0 / 0
        noise.div_(keep.clamp_min(1e-30))
    return x * noise


class DropPath(nn.Module):
    """Stochastic depth for a residual branch: ``x -> drop_path(x, self.p, training=self.training, ...)``.

    ``p`` is a Python float: set it at any time. The module has no parameters or buffers, so adding it
    to a model changes no ``state_dict``. While a
    [`StochasticDepthScheduler`][lightning_reg.stochastic_depth.callback.StochasticDepthScheduler] with
    a changing schedule runs, the module reads its rate from a 0-d device tensor that the scheduler updates
    in place (``p`` still reads the current rate), so a compiled model does not recompile when the rate
    changes; outside such a fit it is the plain float path above.

    Args:
        p: drop probability in ``[0, 1]``.
        mode: ``"row"`` (per sample, default) or ``"batch"`` (whole batch at once).
        scale_by_keep: divide kept values by ``1 - p``.

    Example:
        >>> import torch
        >>> m = DropPath(0.2)
        >>> m
        DropPath(p=0.2, mode=row)
        >>> m.p = 0.0
        >>> torch.equal(m(torch.ones(3, 2)), torch.ones(3, 2))
        True
    """

    _p: float  # written through ``__dict__`` by the ``p`` setter (a plain float, never a buffer)

    def __init__(
        self, p: float = 0.0, mode: Literal["row", "batch"] = "row", scale_by_keep: bool = True
    ) -> None:
        super().__init__()
        self._rate: Tensor | None = None  # set by the scheduler while it schedules this module
        #: Modules with the same group share a depth level in ``find_drop_rate_modules`` (set by
        #: ``add_stochastic_depth`` for the branches of one block); ``None``: grouped by parent module.
        self.depth_group: int | None = None
        self.p = p
        self.mode = check_choice("mode", mode, _MODES)
        self.scale_by_keep = check_bool("scale_by_keep", scale_by_keep)

    @property
    def p(self) -> float:
        """The drop probability in ``[0, 1]`` (a float; reading it never syncs a device)."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        if type(value) is not float or not 0.0 <= value <= 1.0:
            value = check_number("p", value, low=0.0, high=1.0)
        self.__dict__["_p"] = value
        rate = self.__dict__.get("_rate")
        if rate is not None:
            rate.fill_(value)

    def forward(self, x: Tensor) -> Tensor:
        """Drop ``x`` per sample with probability ``p`` in training mode; identity in eval mode."""
        if not self.training:
            return x
        rate = self._rate
        if rate is not None:
            return drop_path(x, rate, training=True, mode=self.mode, scale_by_keep=self.scale_by_keep)
        return drop_path(x, self._p, training=True, mode=self.mode, scale_by_keep=self.scale_by_keep)

    def extra_repr(self) -> str:
        """Describe the rate, mode and (when off) the scaling."""
        s = f"p={self.p:.4g}, mode={self.mode}"
        return s if self.scale_by_keep else s + ", scale_by_keep=False"


#: Attribute name of the DropPath child that ``attach_drop_path`` adds to a branch-end module.
ATTACHED_NAME = "drop_path"


def _drop_path_output_hook(module: nn.Module, args: Any, output: Tensor) -> Tensor:
    # Module-level function (not a closure) so models stay picklable and deep-copyable.
    return getattr(module, ATTACHED_NAME)(output)


def attach_drop_path(module: nn.Module, p: float = 0.0, mode: Literal["row", "batch"] = "row") -> DropPath:
    """Make ``module``'s output pass through a ``DropPath`` (the generic way for user blocks).

    Call it on the *last* submodule of a residual branch, the one whose output is added to the skip
    connection (e.g. the final norm layer of the branch). The
    [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath] becomes the child
    ``module.drop_path`` and a forward hook applies it to ``module``'s output. No parameter or buffer is
    added, so ``state_dict`` keys do not change, and in eval mode the output is returned untouched.
    Calling it again on the same module only updates the rate and mode.

    The module must only be used inside the residual branch (not also on the skip path), and its output
    must be a tensor with the batch dimension first. An ``nn.Sequential`` gets it on its last module (whose
    output is the Sequential's): a child added to a Sequential would also run as one of its steps.

    Args:
        module: last layer of a residual branch.
        p: drop probability in ``[0, 1]``.
        mode: ``"row"`` or ``"batch"``, see [`drop_path`][lightning_reg.stochastic_depth.layers.drop_path].

    Returns:
        The attached [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath].

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.branch = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        ...     def forward(self, x):
        ...         return x + self.branch(x)
        >>> block = Block()
        >>> keys = list(block.state_dict())
        >>> attach_drop_path(block.branch, 0.1)
        DropPath(p=0.1, mode=row)
        >>> list(block.state_dict()) == keys
        True
    """
    while isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    existing = getattr(module, ATTACHED_NAME, None)
    if isinstance(existing, DropPath) and _drop_path_output_hook in module._forward_hooks.values():
        DropPath(p, mode)  # validate
        existing.p, existing.mode = p, mode
        return existing
    if existing is not None:
        raise ValueError(
            f"{type(module).__name__} already has an attribute {ATTACHED_NAME!r} ({type(existing).__name__});"
            " attach the DropPath to another submodule of the residual branch"
        )
    layer = DropPath(p, mode)
    module.add_module(ATTACHED_NAME, layer)
    module.register_forward_hook(_drop_path_output_hook)
    return layer


BranchEnd = str | tuple[str, ...]
"""The end of a block's residual branch: one submodule name, or one per branch (transformer blocks)."""


def _default_branch_ends() -> dict[type[nn.Module], BranchEnd]:
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.vision_transformer import EncoderBlock

    return {
        BasicBlock: "bn2",
        Bottleneck: "bn3",
        EncoderBlock: ("dropout", "mlp"),  # attention branch, then the MLP branch
        nn.TransformerEncoderLayer: ("dropout1", "dropout2"),
        nn.TransformerDecoderLayer: ("dropout1", "dropout2", "dropout3"),
    }


DEFAULT_BRANCH_ENDS: Mapping[type[nn.Module], BranchEnd] = _default_branch_ends()
"""Block type -> the last submodule of each of its residual branches, found without ``branch_ends``:
torchvision's ResNet blocks (one branch), torchvision's ViT ``EncoderBlock`` and torch's
``nn.TransformerEncoderLayer`` (two branches: attention, feed-forward) and ``nn.TransformerDecoderLayer``
(three)."""


def _end_names(block_type: type, ends: object) -> tuple[str, ...]:
    names = (ends,) if isinstance(ends, str) else ends
    if not isinstance(names, tuple) or not names or not all(isinstance(n, str) and n for n in names):
        raise TypeError(
            "`branch_ends` must map block types to the name of the submodule ending the residual branch"
            f" (or a tuple of names, one per branch); got {block_type!r}: {ends!r}"
        )
    return names


def _sequence_first(block: nn.Module) -> bool:
    attention = getattr(block, "self_attn", None)
    return isinstance(block, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and not getattr(
        attention, "batch_first", True
    )


def sequence_first_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s torch transformer layers built with ``batch_first=False``.

    Drop-path cannot go into them: their batch dimension is the second, and ``DropPath`` drops along the
    first. [`add_stochastic_depth`][lightning_reg.stochastic_depth.layers.add_stochastic_depth] refuses
    them; a preset skips drop-path for such a model with a note.

    Args:
        model: the model to search.

    Returns:
        Qualified names, in registration order.

    Example:
        >>> from torch import nn
        >>> sequence_first_layers(nn.Sequential(nn.TransformerEncoderLayer(8, 2, batch_first=False)))
        ['0']
    """
    return [name for name, m in model.named_modules() if _sequence_first(m)]


def _check_batch_first(block_name: str, block: nn.Module) -> None:
    if _sequence_first(block):
        raise ValueError(
            f"Block {block_name!r} ({type(block).__name__}) was built with batch_first=False: its batch"
            " dimension is the second, and DropPath drops along the first (it would drop sequence"
            " positions, not samples). Build the layer with batch_first=True to give it drop-path."
        )


def add_stochastic_depth(
    model: nn.Module,
    max_rate: float,
    rule: str | DepthRule = "linear",
    branch_ends: Mapping[type[nn.Module], BranchEnd] | None = None,
    mode: Literal["row", "batch"] = "row",
) -> list[DropPath]:
    """Insert ``DropPath`` into every residual block of ``model``, rates by a depth rule.

    Blocks are found by type, in registration order (shallowest first): the types of
    [`DEFAULT_BRANCH_ENDS`][lightning_reg.stochastic_depth.layers.DEFAULT_BRANCH_ENDS] (torchvision
    ``BasicBlock`` after ``bn2``, ``Bottleneck`` after ``bn3``, ViT ``EncoderBlock`` after ``dropout`` and
    ``mlp``; torch's ``nn.TransformerEncoderLayer`` after ``dropout1`` and ``dropout2``, built with
    ``batch_first=True``), plus the types in ``branch_ends``. Each branch end gets
    [`attach_drop_path`][lightning_reg.stochastic_depth.layers.attach_drop_path] (the branches of one
    block share the block's rate),
    so ``state_dict`` keys are unchanged (a state
    dict of the unmodified model loads with ``strict=True``) and eval-mode outputs are bitwise unchanged.
    Applying it twice only updates the rates.

    For your own residual blocks, name the submodule whose output is added to the skip connection:
    ``add_stochastic_depth(model, 0.1, branch_ends={MyBlock: "bn2"})`` (dotted paths such as
    ``"branch.3"`` work). Alternatively put a [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath] in
    the block yourself, or call
    [`attach_drop_path`][lightning_reg.stochastic_depth.layers.attach_drop_path] on single submodules.

    Args:
        model: the model to modify in place.
        max_rate: the depth rule's maximum rate, in ``[0, 1)``.
        rule: ``"linear"`` (timm), ``"huang"``, ``"uniform"`` or a callable, see
            [`lightning_reg.stochastic_depth.rate_rules.depth_rates`][lightning_reg.stochastic_depth.rate_rules.depth_rates].
        branch_ends: extra (or overriding) ``{block type: branch-end submodule name}`` entries; a tuple of
            names for a block with several residual branches.
        mode: ``"row"`` (per sample; DDP needs no ``find_unused_parameters``) or ``"batch"``.

    Returns:
        The DropPath modules, shallowest first.

    Raises:
        ValueError: no residual block found, a bad rate, rule or branch name, or a torch transformer layer
            built with ``batch_first=False`` (its batch dimension is not the first).

    Example:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18()
        >>> layers = add_stochastic_depth(model, 0.2)
        >>> len(layers), layers[0].p, round(layers[-1].p, 6)
        (8, 0.0, 0.2)
    """
    ends: dict[type[nn.Module], tuple[str, ...]] = {}
    for block_type, names in (branch_ends or {}).items():
        if not isinstance(block_type, type):
            raise TypeError(
                f"`branch_ends` must map block types to submodule names, got {block_type!r}: {names!r}"
            )
        ends[block_type] = _end_names(block_type, names)
    for block_type, names in DEFAULT_BRANCH_ENDS.items():  # user entries are matched first
        ends.setdefault(block_type, _end_names(block_type, names))
    targets: list[tuple[nn.Module, list[nn.Module]]] = []
    for block_name, block in model.named_modules():
        for block_type, end_names in ends.items():
            if isinstance(block, block_type):
                _check_batch_first(block_name, block)
                branch_modules = []
                for end_name in end_names:
                    try:
                        branch_modules.append(block.get_submodule(end_name))
                    except AttributeError as err:
                        raise ValueError(
                            f"Block {block_name!r} ({type(block).__name__}) has no submodule {end_name!r}"
                            " to end its residual branch"
                        ) from err
                targets.append((block, branch_modules))
                break
    if not targets:
        known = sorted(t.__name__ for t in ends)
        raise ValueError(
            f"No residual block found in {type(model).__name__}: looked for {known}. Pass"
            " `branch_ends={YourBlock: 'name_of_last_branch_layer'}` for your own blocks."
        )
    rates = depth_rates(len(targets), max_rate, rule)
    layers: list[DropPath] = []
    for (block, branch_modules), rate in zip(targets, rates):
        for end in branch_modules:
            layer = attach_drop_path(end, rate, mode)
            layer.depth_group = id(block)  # the branches of one block share its depth level
            layers.append(layer)
    return layers


@dataclass(frozen=True)
class DropRateSite:
    """One module with a schedulable drop rate, as found by ``find_drop_rate_modules``.

    Args:
        name: qualified name in the model (``model.named_modules()``).
        module: the module.
        attr: name of its float rate attribute (``"p"``, ``"drop_prob"``, ``"dropout"`` of a recurrent
            layer, ...).
        level: depth level (0-based) among drop-path modules; modules with the same parent share a level.
            ``-1`` for dropout modules.
        is_dropout: ``True`` for ``nn.Dropout``-family modules and multi-layer recurrent layers.

    Example:
        >>> m = DropPath(0.1)
        >>> DropRateSite("blocks.0.drop_path", m, "p", 0, False).attr
        'p'
    """

    name: str
    module: nn.Module
    attr: str
    level: int
    is_dropout: bool


def _drop_path_types() -> dict[type[nn.Module], str]:
    from torchvision.ops import StochasticDepth

    types: dict[type[nn.Module], str] = {DropPath: "p", StochasticDepth: "p"}
    try:
        from timm.layers import DropPath as TimmDropPath
    except ImportError:  # timm is optional
        pass
    else:
        types[TimmDropPath] = "drop_prob"
    return types


def find_drop_rate_modules(model: nn.Module, include_dropout: bool = False) -> list[DropRateSite]:
    """Find every drop-path module of ``model`` (and optionally every dropout module), in registration order.

    Recognised: [`DropPath`][lightning_reg.stochastic_depth.layers.DropPath] and
        ``torchvision.ops.StochasticDepth`` (rate attribute ``p``), timm
    ``DropPath`` (``drop_prob``), and the protocol for your own layers: a module class with a class
    attribute ``drop_rate_attribute`` naming its float rate attribute, e.g.:

    ```python
    class MyDropPath(nn.Module):
        drop_rate_attribute = "rate"
        def __init__(self, rate): super().__init__(); self.rate = rate
    ```

    Drop-path modules sharing a parent module (e.g. ``drop_path1`` and ``drop_path2`` of one transformer
    block) get the same depth ``level``; levels count distinct parents in registration order.

    Args:
        model: the model to search.
        include_dropout: also return ``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and
            ``FeatureAlphaDropout`` modules (attribute ``p``, level ``-1``), and the recurrent layers
            (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) of more than one layer, whose ``dropout`` acts between
            their layers (attribute ``dropout``; a one-layer recurrent layer has no dropout to set),
            after the drop-path modules.

    Returns:
        Drop-path modules by depth, then dropout modules.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), DropPath(0.1), nn.Dropout(0.5))
        >>> [(f.name, f.attr, f.level) for f in find_drop_rate_modules(model, include_dropout=True)]
        [('1', 'p', 0), ('2', 'p', -1)]
        >>> rnn = nn.ModuleDict({"deep": nn.LSTM(4, 4, num_layers=2), "one": nn.GRU(4, 4)})
        >>> [(f.name, f.attr) for f in find_drop_rate_modules(rnn, include_dropout=True)]
        [('deep', 'dropout')]
    """
    known = _drop_path_types()
    drop_paths: list[DropRateSite] = []
    dropouts: list[DropRateSite] = []
    levels: dict[object, int] = {}
    for name, module in model.named_modules():
        attr = getattr(type(module), "drop_rate_attribute", None)
        if not isinstance(attr, str):
            attr = next((a for t, a in known.items() if isinstance(module, t)), None)
        if attr is not None:
            parent = name.rpartition(".")[0]
            group = getattr(module, "depth_group", None)  # set by add_stochastic_depth: the block
            level = levels.setdefault(parent if group is None else group, len(levels))
            drop_paths.append(DropRateSite(name, module, attr, level, False))
        elif include_dropout and isinstance(module, nn.modules.dropout._DropoutNd):
            dropouts.append(DropRateSite(name, module, "p", -1, True))
        elif include_dropout and isinstance(module, nn.RNNBase) and module.num_layers > 1:
            dropouts.append(DropRateSite(name, module, "dropout", -1, True))
    return drop_paths + dropouts
