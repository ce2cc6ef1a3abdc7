"""The module side of a preset: its batch mixer, and whether its weight decay applies to an optimizer.

``RegularizedModule(preset=..., num_classes=K)`` takes the preset's weight decay and its mixer (unless
given explicitly; the precedence is ``RegularizationConfig``'s), and calls
[`check_preset_optimizer`][lightning_reg.presets.module_side.check_preset_optimizer]
once its optimizer exists: the presets' weight decay is decoupled weight decay (AdamW), so with an
optimizer that adds it to the gradient instead (SGD, Adam) it is skipped with a note rather than applied
with a meaning it does not have.

A preset states Mixup and CutMix as per-batch probabilities.
[`PresetMixer`][lightning_reg.presets.module_side.PresetMixer] turns them into a
[`BatchMixer`][lightning_reg.mixing.mixers.BatchMixer] and, at the first training batch, checks that the
inputs can
take them: CutMix needs a spatial dimension (``(B, C, L)`` sequences or ``(B, C, H, W)`` images), Mixup
needs floating-point inputs. A part that does not apply is switched off with a one-line note, and the
other parts keep their own probabilities (a tabular batch is mixed by Mixup exactly as often as the
preset says; the batches CutMix would have taken stay unmixed).
"""

from __future__ import annotations

from torch import Tensor
from torch.optim import Optimizer

from lightning_reg._shared.validation import check_int
from lightning_reg._shared.verbosity import check_verbose, say
from lightning_reg.mixing.mixers import BatchMixer, MixParams
from lightning_reg.presets.registry import Preset, get_preset, preset_skip_note
from lightning_reg.weight_decay.groups import uses_decoupled_weight_decay

__all__ = ["PresetMixer", "check_preset_optimizer", "preset_mixer"]


class PresetMixer(BatchMixer):
    """A ``BatchMixer`` configured by a ``Preset``.

    Each training batch is mixed by Mixup with probability ``preset.mixup_prob``, by CutMix with
    probability ``preset.cutmix_prob``, else left as it is; every target is smoothed by
    ``preset.label_smoothing``. At the first batch, parts the inputs cannot take are skipped with a note
    (see the module docstring); the decision depends on the batch shape only, so every rank and every
    resumed run takes the same one.

    Args:
        num_classes: number of classes of the soft targets.
        preset: the preset (or its name).
        seed: seed of the mixing stream (``None``: drawn from torch's global generator).
        verbose: ``0`` silences the skip notes.

    Example:
        >>> import torch
        >>> mixer = PresetMixer(3, Preset("p", mixup_prob=0.5, cutmix_prob=0.5), seed=0, verbose=0)
        >>> x, y = mixer(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))  # tabular: CutMix is skipped
        >>> mixer.cutmix_alpha, mixer.prob, mixer.skipped
        (0.0, 0.5, ['CutMix'])
    """

    def __init__(
        self, num_classes: int, preset: Preset | str, seed: int | None = None, verbose: int | bool = 1
    ) -> None:
        self.preset = get_preset(preset)
        p = self.preset
        prob = p.mixup_prob + p.cutmix_prob
        super().__init__(
            num_classes=check_int("num_classes", num_classes, low=2),
            mixup_alpha=p.mixup_alpha if p.mixup_prob > 0 else 0.0,
            cutmix_alpha=p.cutmix_alpha if p.cutmix_prob > 0 else 0.0,
            prob=min(prob, 1.0),
            switch_prob=p.cutmix_prob / prob if prob > 0 else 0.0,
            label_smoothing=p.label_smoothing,
            seed=seed,
        )
        self.verbose = check_verbose(verbose)
        #: Parts of the preset skipped because the inputs cannot take them.
        self.skipped: list[str] = []
        self._checked = False

    def _check_inputs(self, x: Tensor) -> None:
        self._checked = True
        if not self.active():
            return
        if not x.dtype.is_floating_point:
            parts = [n for n, a in (("Mixup", self.mixup_alpha), ("CutMix", self.cutmix_alpha)) if a > 0]
            self.mixup_alpha = self.cutmix_alpha = 0.0
            self.skipped += parts
            say(
                self.verbose,
                1,
                preset_skip_note(
                    self.preset,
                    " and ".join(parts),
                    f"inputs of dtype {x.dtype} cannot be interpolated; label smoothing stays",
                ),
            )
            return
        if self.cutmix_alpha > 0 and x.ndim < 3:
            self.cutmix_alpha = 0.0
            self.prob = self.preset.mixup_prob
            self.switch_prob = 0.0
            self.skipped.append("CutMix")
            say(
                self.verbose,
                1,
                preset_skip_note(
                    self.preset,
                    "CutMix",
                    f"inputs of shape {tuple(x.shape)} have no "
                    f"spatial dimension; Mixup stays at p={self.preset.mixup_prob:g}",
                ),
            )

    def sample(self, x: Tensor, epoch: int | None = None) -> MixParams:
        """Draw the decision for one batch (after checking the inputs once).

        Args:
            x: the input batch.
            epoch: the current 0-based epoch.

        Example:
            >>> import torch
            >>> PresetMixer(2, Preset("p", label_smoothing=0.1), verbose=0).sample(torch.zeros(2, 3)).kind
            'none'
        """
        if not self._checked:
            self._check_inputs(x)
        return super().sample(x, epoch)


def preset_mixer(
    preset: Preset | str, num_classes: int | None, seed: int | None = None, verbose: int | bool = 1
) -> PresetMixer | None:
    """Return the mixer a preset asks for, or ``None`` when it neither smooths labels nor mixes.

    Without ``num_classes`` (a model that is not a classifier) label smoothing and mixing do not apply:
    they are skipped with a note and ``None`` is returned.

    Args:
        preset: the preset (or its name).
        num_classes: number of classes, or ``None``.
        seed: seed of the mixing stream.
        verbose: ``0`` silences the note.

    Returns:
        A [`PresetMixer`][lightning_reg.presets.module_side.PresetMixer] or ``None``.

    Example:
        >>> preset_mixer(Preset("p", weight_decay=0.1), num_classes=10) is None   # nothing to mix
        True
        >>> type(preset_mixer(Preset("p", label_smoothing=0.1), num_classes=10)).__name__
        'PresetMixer'
    """
    p = get_preset(preset)
    if not p.mixes:
        return None
    if num_classes is None:
        parts = [
            n
            for n, v in (
                ("label smoothing", p.label_smoothing),
                ("Mixup", p.mixup_prob),
                ("CutMix", p.cutmix_prob),
            )
            if v > 0
        ]
        say(
            check_verbose(verbose),
            1,
            preset_skip_note(
                p,
                ", ".join(parts),
                "no num_classes given: they apply to classifiers; pass num_classes=K to use them",
            ),
        )
        return None
    return PresetMixer(num_classes, p, seed=seed, verbose=verbose)


def check_preset_optimizer(optimizer: Optimizer, preset: Preset, verbose: int | bool = 1) -> bool:
    """Switch the preset's weight decay off (with a note) for an optimizer without decoupled weight decay.

    The presets' values are decoupled weight decay (``uses_decoupled_weight_decay``); an optimizer that adds
    weight decay to the gradient instead (SGD, Adam) would apply the same number as a different regularizer,
    so every group's ``weight_decay`` is set to 0 and a note says why.

    Args:
        optimizer: the constructed optimizer whose decayed groups hold the preset's weight decay.
        preset: the preset.
        verbose: ``0`` silences the note.

    Returns:
        Whether the weight decay stays on.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.SGD([{"params": [w], "weight_decay": 0.1}], lr=0.1)
        >>> check_preset_optimizer(opt, get_preset("mild"), verbose=0), opt.param_groups[0]["weight_decay"]
        (False, 0.0)
    """
    if uses_decoupled_weight_decay(optimizer) or preset.weight_decay == 0:
        return True
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.0
    say(
        check_verbose(verbose),
        1,
        preset_skip_note(
            preset,
            "weight decay",
            f"its value {preset.weight_decay:g} is decoupled weight decay (AdamW); "
            f"{type(optimizer).__name__} adds weight decay to the gradient, so pass weight_decay= for it "
            "yourself",
        ),
    )
    return False
