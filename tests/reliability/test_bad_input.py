# ruff: noqa: E501  (one table row per case reads better than wrapped rows)
"""Bad input: every public constructor/function rejects invalid values with a message that names the
argument and the valid choices or range (wrong types, out-of-range numbers, unknown names, conflicts)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_reg import (
    BatchMixer,
    DecayRule,
    DropPath,
    EarlyStopping,
    FreezeBatchNorm,
    GradientClipping,
    GradientMonitor,
    OverfittingMonitor,
    ProximalL1,
    RegularizedModule,
    ReproducibleResume,
    StochasticDepthScheduler,
    WarmupCosineLR,
    add_stochastic_depth,
    drop_path,
    mixup,
    weight_decay_param_groups,
)
from lightning_reg.mixing import soft_target_cross_entropy
from lightning_reg.mixing.mixers import cutmix_box, soft_targets
from lightning_reg.overfitting import OverfittingCriteria, generalization_loss, overfitting_gap
from lightning_reg.penalties import WeightPenalty, elastic_net_penalty
from lightning_reg.penalties.functional import soft_threshold_
from lightning_reg.stochastic_depth import depth_rates, linear_depth_rates
from lightning_reg.stochastic_depth.rate_rules import make_time_schedule


def _opt() -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)


PAIR = {"loss": ("train_loss", "val_loss")}

# (id, call, exception type, regex that must match the message: the argument and the valid values)
CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # EarlyStopping
    ("es-snapshot", lambda: EarlyStopping("v", snapshot="gpu"), ValueError, r"`snapshot`.*'cpu'.*'device'.*'checkpoint'.*'gpu'"),
    ("es-start-negative", lambda: EarlyStopping("v", start_from_epoch=-1), ValueError, r"`start_from_epoch`.*>= 0.*-1"),
    ("es-start-float", lambda: EarlyStopping("v", start_from_epoch=1.5), TypeError, r"`start_from_epoch`.*int.*1.5"),
    ("es-baseline-nan", lambda: EarlyStopping("v", baseline=float("nan")), ValueError, r"`baseline`.*finite.*nan"),
    ("es-mode", lambda: EarlyStopping("v", mode="maximize"), MisconfigurationException, r"`mode`.*min, max.*maximize"),
    ("es-patience", lambda: EarlyStopping("v", patience=-1), ValueError, r"`patience`.*>= 0.*-1"),
    ("es-min-delta", lambda: EarlyStopping("v", min_delta=-0.1), ValueError, r"`min_delta`.*>= 0.*-0.1"),
    ("es-monitor-type", lambda: EarlyStopping(monitor=3), TypeError, r"`monitor`.*str.*3"),
    ("es-verbose", lambda: EarlyStopping("v", verbose=3), ValueError, r"`verbose`.*\[0, 2\].*3"),
    ("es-strict-type", lambda: EarlyStopping("v", strict="yes"), TypeError, r"`strict`.*bool.*'yes'"),
    # GradientClipping
    ("gc-algorithm", lambda: GradientClipping("median"), ValueError, r"`algorithm`.*'norm'.*'zclip'.*None.*'median'"),
    ("gc-none-conflict", lambda: GradientClipping(None), ValueError, r"`algorithm=None`.*`skip_nonfinite=True`"),
    ("gc-max-norm", lambda: GradientClipping("norm", max_norm=0.0), ValueError, r"`max_norm`.*> 0.*0\.0"),
    ("gc-percentile", lambda: GradientClipping("autoclip", percentile=150.0), ValueError, r"`percentile`.*\[0, 100\].*150"),
    ("gc-zclip-alpha", lambda: GradientClipping("zclip", zclip_alpha=1.5), ValueError, r"`zclip_alpha`.*\(0, 1\).*1\.5"),
    ("gc-clip-factor", lambda: GradientClipping("agc", clip_factor=-1.0), ValueError, r"`clip_factor`.*> 0"),
    ("gc-history", lambda: GradientClipping("autoclip", history_size=0), ValueError, r"`history_size`.*>= 1.*0"),
    ("gc-skips", lambda: GradientClipping("norm", max_consecutive_skips=0), ValueError, r"`max_consecutive_skips`.*>= 1"),
    ("gc-norm-type", lambda: GradientClipping("norm", norm_type=-1.0), ValueError, r"`norm_type`.*> 0.*inf"),
    ("gc-agc-regex", lambda: GradientClipping("agc", agc_exclude=["re:("]), ValueError, r"`agc_exclude`.*'re:\('.*not a valid regex"),
    ("gc-percentile-fraction", lambda: GradientClipping("autoclip", percentile=0.1), ValueError, r"`percentile` is in percent.*0\.1.*pass 10"),
    ("gc-verbose", lambda: GradientClipping("norm", verbose=3), ValueError, r"`verbose`.*\[0, 2\].*3"),
    # GradientMonitor
    ("gm-group-by", lambda: GradientMonitor(group_by="layer"), ValueError, r"`group_by`.*'module'.*'param_groups'.*'patterns'.*'layer'"),
    ("gm-patterns-missing", lambda: GradientMonitor(group_by="patterns"), ValueError, r"`group_by='patterns'`.*`patterns"),
    ("gm-regex-invalid", lambda: GradientMonitor(patterns={"a": "re:("}), ValueError, r"`patterns\['a'\]`.*'re:\('.*not a valid regex"),
    ("gm-regex-unprefixed", lambda: GradientMonitor(patterns={"a": "bias$"}), ValueError, r"`patterns\['a'\]`.*'bias\$'.*looks like a regular expression.*'re:bias\$'"),
    ("gm-log-every", lambda: GradientMonitor(log_every_n_steps=-1), ValueError, r"`log_every_n_steps`.*int >= 0 or None.*-1"),
    ("gm-depth", lambda: GradientMonitor(depth=0), ValueError, r"`depth`.*>= 1"),
    # StochasticDepthScheduler, DropPath, schedules
    ("sd-rate", lambda: StochasticDepthScheduler(max_rate=1.0), ValueError, r"`max_rate`.*\[0, 1\).*1\.0"),
    ("sd-rate-type", lambda: StochasticDepthScheduler(max_rate="0.1"), TypeError, r"`max_rate`.*number.*str"),
    ("sd-rule", lambda: StochasticDepthScheduler(rule="quadratic"), ValueError, r"`rule`.*'linear', 'huang', 'uniform'.*'quadratic'"),
    ("sd-schedule", lambda: StochasticDepthScheduler(schedule="cosine"), ValueError, r"`schedule`.*'constant', 'warmup'.*'cosine'"),
    ("sd-cutoff-missing", lambda: StochasticDepthScheduler(schedule="warmup"), TypeError, r"`cutoff`.*number.*'warmup'.*None"),
    ("sd-cutoff-unused", lambda: StochasticDepthScheduler(max_rate=0.1, cutoff=5), ValueError, r"`cutoff` is used only by.*'warmup'.*'constant'"),
    ("sd-cutoff-unit", lambda: StochasticDepthScheduler(schedule="warmup", cutoff=3, cutoff_unit="minute"), ValueError, r"`cutoff_unit`.*'step', 'epoch', 'fraction'.*'minute'"),
    ("sd-fraction", lambda: StochasticDepthScheduler(schedule="warmup", cutoff=1.5, cutoff_unit="fraction"), ValueError, r"`cutoff`.*fraction.*\[0, 1\]"),
    ("sd-early-mode", lambda: StochasticDepthScheduler(schedule="early", cutoff=3, early_mode="exp"), ValueError, r"`early_mode`.*'linear', 'constant'.*'exp'"),
    ("sd-dropout-rate", lambda: StochasticDepthScheduler(include_dropout=True, dropout_rate=2.0), ValueError, r"`dropout_rate`.*\[0, 1\)"),
    ("sd-verbose", lambda: StochasticDepthScheduler(verbose="yes"), TypeError, r"`verbose`.*int"),
    ("rr-cuda-devices", lambda: ReproducibleResume(cuda_devices="all"), TypeError, r"`cuda_devices`.*'auto' or a list.*'all'"),
    ("rr-numpy", lambda: ReproducibleResume(numpy=1), TypeError, r"`numpy` must be a bool"),
    ("droppath-p", lambda: DropPath(p=1.5), ValueError, r"`p`.*\[0, 1\].*1\.5"),
    ("droppath-mode", lambda: DropPath(p=0.1, mode="sample"), ValueError, r"`mode`.*'row', 'batch'.*'sample'"),
    ("drop_path-p", lambda: drop_path(torch.ones(2, 3), p=-0.1), ValueError, r"`p`.*\[0, 1\]"),
    ("drop_path-order", lambda: drop_path(torch.ones(2, 3), 0.5, "batch"), TypeError, r"2 positional arguments but 3"),
    ("add_sd-no-blocks", lambda: add_stochastic_depth(nn.Linear(2, 2), 0.1), ValueError, r"BasicBlock.*Bottleneck.*`branch_ends"),
    ("linear_rates-n", lambda: linear_depth_rates(-1, 0.1), ValueError, r"`num_blocks`.*int >= 0.*-1"),
    ("depth_rates-rule", lambda: depth_rates(3, 0.1, rule="x"), ValueError, r"`rule`.*'linear'.*'x'"),
    ("time_schedule-name", lambda: make_time_schedule("x"), ValueError, r"`schedule`.*'constant'.*'x'"),
    # OverfittingMonitor and its pure functions
    ("om-pairs-empty", lambda: OverfittingMonitor({}), ValueError, r"`pairs`.*non-empty.*train_key, val_key"),
    ("om-pair-shape", lambda: OverfittingMonitor({"loss": ("a",)}), ValueError, r"Pair 'loss'.*\(train_key, val_key\)"),
    ("om-pair-mode", lambda: OverfittingMonitor({"loss": ("a", "b", "maximize")}), ValueError, r"Mode of pair 'loss'.*'min', 'max'.*'maximize'"),
    ("om-action", lambda: OverfittingMonitor(PAIR, action="email"), ValueError, r"`action`.*'warn', 'stop'.*callable.*'email'"),
    ("om-warmup", lambda: OverfittingMonitor(PAIR, warmup=-1), ValueError, r"`warmup`.*>= 0"),
    ("om-criterion", lambda: OverfittingMonitor(PAIR, criteria={"foo": 1.0}), ValueError, r"criterion 'foo'.*'trend', 'gl', 'pq', 'up', 'gap', 'rel_gap'"),
    ("om-threshold", lambda: OverfittingMonitor(PAIR, criteria={"gl": -1.0}), ValueError, r"criterion 'gl'.*finite number > 0"),
    ("om-probe", lambda: OverfittingMonitor(PAIR, probe=1.5), ValueError, r"`probe`.*\(0, 1\].*DataLoader"),
    ("om-probe-metrics-conflict", lambda: OverfittingMonitor(PAIR, probe_metrics={"loss": None}), ValueError, r"`probe_metrics` needs `probe`"),
    ("om-patience", lambda: OverfittingMonitor(PAIR, patience=0), ValueError, r"`patience`.*>= 1"),
    ("om-strip-length", lambda: OverfittingMonitor(PAIR, strip_length=1), ValueError, r"`strip_length`.*>= 2"),
    ("om-gl-percent", lambda: OverfittingMonitor(PAIR, criteria={"gl": 0.05}), ValueError, r"'gl'.*percent.*got 0.05.*Write 5 for 5 %"),
    ("om-window-type", lambda: OverfittingMonitor(PAIR, window=2.5), TypeError, r"`window` must be an int >= 3; got 2.5"),
    ("criteria-patience", lambda: OverfittingCriteria({"loss": "min"}, {"gl": 5.0}, patience=0), ValueError, r"`patience`.*>= 1"),
    ("gl-mode", lambda: generalization_loss(1.0, 0.5, mode="up"), ValueError, r"`mode`.*'min', 'max'.*'up'"),
    ("gap-mode", lambda: overfitting_gap(1.0, 0.5, mode="x"), ValueError, r"`mode`.*'min', 'max'"),
    # FreezeBatchNorm, ProximalL1, penalties
    ("fbn-epoch", lambda: FreezeBatchNorm(epoch=-1), ValueError, r"`epoch` must be an int >= 0; got -1"),
    ("fbn-modules-str", lambda: FreezeBatchNorm(modules="stem"), TypeError, r"`modules` must be a list of str.*\['stem'\]"),
    ("fbn-modules-regex", lambda: FreezeBatchNorm(modules=["^stem"]), ValueError, r"`modules`.*looks like a regular expression.*'re:\^stem'"),
    ("fbn-verbose", lambda: FreezeBatchNorm(verbose=3), ValueError, r"`verbose` must be an int in \[0, 2\]; got 3"),
    ("prox-l1-zero", lambda: ProximalL1(l1=0.0), ValueError, r"`l1` must be a finite number > 0; got 0\.0"),
    ("prox-l1-negative", lambda: ProximalL1(l1=-1.0), ValueError, r"`l1` must be a finite number > 0; got -1\.0"),
    ("prox-l1-type", lambda: ProximalL1(l1="0.1"), TypeError, r"`l1` must be a finite number > 0; got '0\.1' of type str"),
    ("prox-rule-type", lambda: ProximalL1(l1=0.1, rule="bias"), TypeError, r"`rule` must be a DecayRule, a mapping of its arguments, or None"),
    ("penalty-l1", lambda: WeightPenalty(l1=-1.0), ValueError, r"`l1` must be a finite number >= 0; got -1\.0"),
    ("penalty-l2-nan", lambda: WeightPenalty(l2=float("nan")), ValueError, r"`l2` must be a finite number >= 0; got nan"),
    ("penalty-both-zero", lambda: WeightPenalty(), ValueError, r"`l1` and `l2` are both 0"),
    ("penalty-log-every", lambda: WeightPenalty(l2=0.1, log_every_n_steps=-1), ValueError, r"`log_every_n_steps`.*>= 0.*-1"),
    ("elastic-net-l1", lambda: elastic_net_penalty([torch.zeros(2)], l1=-1.0), ValueError, r"`l1`.*>= 0; got -1\.0"),
    ("soft-threshold", lambda: soft_threshold_([torch.zeros(2)], -1.0), ValueError, r"`threshold`.*>= 0; got -1\.0"),
    ("decay-rule-flag", lambda: DecayRule(bias="yes"), TypeError, r"`bias` must be a bool.*'yes'"),
    ("decay-rule-exclude-str", lambda: DecayRule(exclude="head"), TypeError, r"`exclude` must be a list of str.*\['head'\]"),
    ("decay-rule-exclude-regex", lambda: DecayRule(exclude=["head$"]), ValueError, r"`exclude`.*looks like a regular expression"),
    # RegularizedModule, parameter groups, WarmupCosineLR
    ("rm-weight-decay", lambda: RegularizedModule(weight_decay=-0.1), ValueError, r"weight_decay.*finite number >= 0.*-0\.1"),
    ("rm-weight-decay-nan", lambda: RegularizedModule(weight_decay=float("nan")), ValueError, r"weight_decay.*finite.*nan"),
    ("rm-lr", lambda: RegularizedModule(lr=-1.0), ValueError, r"lr.*>= 0 or None.*-1\.0"),
    ("rm-layer-decay", lambda: RegularizedModule(layer_decay=1.5), ValueError, r"layer_decay.*\(0, 1\].*1\.5"),
    ("rm-interval", lambda: RegularizedModule(lr_scheduler_interval="batch"), ValueError, r"`lr_scheduler_interval` must be one of 'step', 'epoch'; got 'batch'"),
    ("rm-optimizer", lambda: RegularizedModule(optimizer="adam"), TypeError, r"`optimizer` must be a callable params -> Optimizer; got 'adam'"),
    ("rm-lr-twice", lambda: RegularizedModule(optimizer=partial(torch.optim.SGD, lr=0.1)), ValueError, r"`lr` is set twice: SGD\(lr=0\.1\).*lr=0\.001"),
    ("rm-decay-rule", lambda: RegularizedModule(decay_rule={"embedings": True}), ValueError, r"`decay_rule` has unknown key\(s\) \['embedings'\]; valid keys"),
    ("rm-verbose", lambda: RegularizedModule(verbose="loud"), TypeError, r"`verbose` must be an int in \[0, 2\]"),
    ("param-groups-wd", lambda: weight_decay_param_groups(nn.Linear(2, 2), weight_decay=-1.0), ValueError, r"`weight_decay` must be a finite number >= 0; got -1\.0"),
    ("param-groups-wd-type", lambda: weight_decay_param_groups(nn.Linear(2, 2), weight_decay="0.1"), TypeError, r"`weight_decay`.*got '0\.1' of type str"),
    ("param-groups-ld", lambda: weight_decay_param_groups(nn.Linear(2, 2), 0.1, layer_decay=0.0), ValueError, r"layer_decay.*\(0, 1\]"),
    ("wcl-warmup", lambda: WarmupCosineLR(_opt(), warmup_steps=-1), ValueError, r"warmup_steps.*int >= 0"),
    ("wcl-start-factor", lambda: WarmupCosineLR(_opt(), warmup_steps=2, warmup_start_factor=2.0), ValueError, r"warmup_start_factor.*\[0, 1\]"),
    ("wcl-total-conflict", lambda: WarmupCosineLR(_opt(), warmup_steps=5, total_steps=3), ValueError, r"total_steps.*> warmup_steps=5.*3"),
    # batch mixing
    ("mixer-classes", lambda: BatchMixer(num_classes=1), ValueError, r"`num_classes`.*int >= 2.*1"),
    ("mixer-classes-type", lambda: BatchMixer(num_classes="3"), TypeError, r"`num_classes`.*int >= 2.*'3'"),
    ("mixer-labels-range", lambda: BatchMixer(num_classes=5)(torch.zeros(2, 3), torch.tensor([1, 9])), RuntimeError, r"class indices must be in \[0, num_classes=5\)"),
    ("mixer-alpha", lambda: BatchMixer(num_classes=3, mixup_alpha=-1.0), ValueError, r"`mixup_alpha`.*>= 0.*-1\.0"),
    ("mixer-prob", lambda: BatchMixer(num_classes=3, prob=1.5), ValueError, r"`prob`.*\[0, 1\].*1\.5"),
    ("mixer-smoothing", lambda: BatchMixer(num_classes=3, label_smoothing=1.0), ValueError, r"`label_smoothing`.*\[0, 1\).*1\.0"),
    ("mixer-stop", lambda: BatchMixer(num_classes=3, stop_epoch=-1), ValueError, r"`stop_epoch`.*int >= 0 or None.*-1"),
    ("soft-targets", lambda: soft_targets(torch.tensor([0, 1]), 3, label_smoothing=1.0), ValueError, r"`label_smoothing`.*\[0, 1\)"),
    ("soft-ce-reduction", lambda: soft_target_cross_entropy(torch.zeros(2, 3), torch.full((2, 3), 1 / 3), reduction="avg"), ValueError, r"`reduction`.*'mean', 'sum', 'none'.*'avg'"),
    ("mixup-dtype", lambda: mixup(torch.ones(2, 3, dtype=torch.long), 0.5), TypeError, r"floating.*int64"),
    ("cutmix-box-dims", lambda: cutmix_box(0.5, (2, 3, 4), (1, 1, 1)), ValueError, r"size.*center.*1 or 2 entries"),
]  # fmt: skip


def test_table_is_large_and_covers_every_public_callback() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("call", "exc", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_helpful_message(call: Callable[[], Any], exc: type, pattern: str):
    with pytest.raises(exc) as info:
        call()
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not match {pattern!r}"
