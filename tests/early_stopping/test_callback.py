"""EarlyStopping with best-weights restore: every end-of-training reason, every snapshot mode, resume.

The reference for "the best weights" is independent of the callback: a recorder deep-copies the
model's ``state_dict`` after every validation of ``fit`` together with the monitored value; the expected
best epoch is the first arg-min of those values (worked out here), and after ``fit`` the model must equal
that copy tensor for tensor (BatchNorm running statistics and ``num_batches_tracked`` included), and
``trainer.validate`` must reproduce the best score bit for bit.
"""

from __future__ import annotations

import copy
import signal
import warnings
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import EarlyStopping
from lightning_reg._shared.keys import Keys
from lightning_reg._shared.lightning_compat import EarlyStoppingReason
from lightning_reg.early_stopping.callback import CHECKPOINT_KEY
from lightning_reg.early_stopping.snapshot import (
    WeightSnapshot,
    agree_on_score,
    is_sharded_module,
    local_snapshot_tensors,
)
from tests.helpers import ScaledRegression, ValidationRecorder, fast_trainer


class StopAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class InterruptAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            raise KeyboardInterrupt


def _trainer(callbacks, tmp_path=None, **kwargs) -> L.Trainer:
    opts: dict = dict(max_epochs=10, deterministic=True)
    if tmp_path is not None:
        opts.update(enable_checkpointing=True, default_root_dir=str(tmp_path))
    return fast_trainer(callbacks=callbacks, **{**opts, **kwargs})


def _assert_restored(model, trainer, es, rec, start_from_epoch: int = 0) -> None:
    epoch, value, state = rec.expected_best(start_from_epoch)
    last_epoch = rec.records[-1][0]
    assert epoch < last_epoch, "scenario must end after the best epoch, else restore is not exercised"
    assert es.best_epoch == epoch
    assert es.best_score.item() == value
    assert es.restored
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert torch.equal(now[k], state[k]), k
    # the last epoch's weights differ from the best (else the test proves nothing)
    assert not torch.equal(rec.records[-1][2]["net.0.weight"], state["net.0.weight"])
    (metrics,) = trainer.validate(model, verbose=False)
    assert metrics["val_loss"] == value


@pytest.mark.parametrize("check_on_train_epoch_end", [None, False, True])
@pytest.mark.parametrize("snapshot", ["cpu", "device"])
def test_patience_restores_best(snapshot, check_on_train_epoch_end):
    L.seed_everything(0)
    model, rec = ScaledRegression(), ValidationRecorder()
    es = EarlyStopping(
        "val_loss", patience=2, snapshot=snapshot, check_on_train_epoch_end=check_on_train_epoch_end
    )
    trainer = _trainer([rec, es])
    trainer.fit(model)
    assert es.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert es.best_step == (es.best_epoch + 1) * 4
    _assert_restored(model, trainer, es, rec)


def test_checkpoint_mode_restores_best(tmp_path):
    L.seed_everything(0)
    model, rec = ScaledRegression(), ValidationRecorder()
    es = EarlyStopping("val_loss", patience=2, snapshot="checkpoint")
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="min", save_top_k=1)
    trainer = _trainer([rec, es, ckpt], tmp_path)
    trainer.fit(model)
    assert not es._weights.has_value  # no in-memory copy in this mode
    _assert_restored(model, trainer, es, rec)


@pytest.mark.parametrize(
    ("reason", "kwargs", "extra", "trainer_kwargs"),
    [
        ("stopping_threshold", {"stopping_threshold": None}, None, {}),
        ("divergence_threshold", {"divergence_threshold": None}, None, {}),
        ("non_finite", {}, None, {}),
        ("max_epochs", {"patience": 100}, None, {"max_epochs": 6}),
        ("max_steps", {"patience": 100}, None, {"max_steps": 22}),
        ("other_callback", {"patience": 100}, StopAt(5), {}),
        ("keyboard_interrupt", {"patience": 100}, InterruptAt(5), {}),
    ],
)
def test_every_end_reason_restores_best(reason, kwargs, extra, trainer_kwargs):
    # Reference run without stopping to learn the validation curve (for the thresholds)
    if reason in ("stopping_threshold", "divergence_threshold"):
        L.seed_everything(0)
        probe = ValidationRecorder()
        _trainer([probe], max_epochs=8).fit(ScaledRegression())
        values = [v for _, v, _ in probe.records]
        best = min(values)
        if reason == "stopping_threshold":
            # threshold just above the best value: reached at the best epoch, which Lightning does not record
            kwargs = {"stopping_threshold": best + 1e-6, "patience": 100}
        else:
            # divergence: a threshold above every value up to the best, below a later one
            i_best = values.index(best)
            worst_before = max(values[: i_best + 1])
            later = next(v for v in values[i_best + 1 :] if v > worst_before)
            kwargs = {"divergence_threshold": (worst_before + later) / 2, "patience": 100}
    L.seed_everything(0)
    model = ScaledRegression(nan_from_epoch=5 if reason == "non_finite" else None)
    rec = ValidationRecorder()
    es = EarlyStopping("val_loss", **kwargs)
    callbacks = [rec, es] + ([extra] if extra is not None else [])
    trainer = _trainer(callbacks, **trainer_kwargs)
    if reason == "keyboard_interrupt":
        # Lightning 2.6 runs on_exception, tears down, then exits with status 1 and ignores SIGINT
        handler = signal.getsignal(signal.SIGINT)
        try:
            with pytest.raises(SystemExit):
                trainer.fit(model)
        finally:
            signal.signal(signal.SIGINT, handler)
    else:
        trainer.fit(model)
    expected_reason = {
        "divergence_threshold": EarlyStoppingReason.DIVERGENCE_THRESHOLD,
        "non_finite": EarlyStoppingReason.NON_FINITE_METRIC,
        "stopping_threshold": EarlyStoppingReason.STOPPING_THRESHOLD,
    }.get(reason, EarlyStoppingReason.NOT_STOPPED)
    assert es.stopping_reason == expected_reason
    if reason == "keyboard_interrupt":
        assert trainer.interrupted
    if reason == "stopping_threshold":
        # stopping at the best epoch: nothing after it to restore over; check the record is right instead
        epoch, value, state = rec.expected_best()
        assert rec.records[-1][0] == epoch and es.best_epoch == epoch and es.best_score.item() == value
        assert es.restored
        (metrics,) = trainer.validate(model, verbose=False)
        assert metrics["val_loss"] == value
        return
    _assert_restored(model, trainer, es, rec)


def test_start_from_epoch():
    L.seed_everything(0)
    model, rec = ScaledRegression(), ValidationRecorder()
    es = EarlyStopping("val_loss", patience=2, start_from_epoch=4)
    trainer = _trainer([rec, es])
    trainer.fit(model)
    # epoch 3 is the overall best, but checks start at epoch 4: the best counted is the best from epoch 4 on
    overall = rec.expected_best()
    assert overall[0] < 4
    assert es.best_epoch >= 4
    _assert_restored(model, trainer, es, rec, start_from_epoch=4)


def keras3_reference(values, patience, baseline=None, min_delta=0.0):
    """Keras 3 EarlyStopping (mode min), re-implemented from its documented rules: returns (epochs run,
    best epoch). The patience counter counts every epoch and resets only on a new best that also beats the
    baseline; a stop happens only at an epoch that is not a new best."""
    wait, best, best_epoch = 0, None, None
    for epoch, v in enumerate(values):
        wait += 1
        if best is None or v + min_delta < best:
            best, best_epoch = v, epoch
            if baseline is None or v + min_delta < baseline:
                wait = 0
            continue
        if wait >= patience and epoch > 0:
            return epoch + 1, best_epoch
    return len(values), best_epoch


class WeightsAreEpochs(L.LightningModule):
    """A one-parameter model whose weight is set to the epoch number; logs a scripted validation value."""

    def __init__(self, values) -> None:
        super().__init__()
        self.values = values
        self.w = nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.w.fill_(float(self.current_epoch))
        return (self.w * 0).sum() + batch[0].sum() * 0

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(float(self.values[self.current_epoch])))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)


@pytest.mark.parametrize(
    ("values", "patience", "baseline", "epochs_run", "restored"),
    [
        # Keras 3's documented case: no epoch beats the baseline; 5 epochs run, epoch 2 (0.7) is restored
        ([0.9, 0.8, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75], 5, 0.5, 5, 2),
        # improving at every epoch but never beating the baseline: a new best never triggers a stop
        ([0.9, 0.8, 0.7, 0.65, 0.6, 0.58], 2, 0.5, 6, 5),
        # the baseline is beaten at epoch 2, after which patience counts as without a baseline
        ([0.9, 0.8, 0.4, 0.45, 0.46, 0.47, 0.3], 2, 0.5, 5, 2),
        # without a baseline: Lightning's and Keras' rules agree
        ([0.9, 0.8, 0.7, 0.71, 0.72, 0.73], 2, None, 5, 2),
    ],
)
def test_baseline_matches_keras3(values, patience, baseline, epochs_run, restored):
    assert keras3_reference(values, patience, baseline) == (epochs_run, restored)
    model = WeightsAreEpochs(values)
    es = EarlyStopping("val_loss", patience=patience, baseline=baseline, verbose=0)
    trainer = _trainer([es], max_epochs=len(values), deterministic=False)
    trainer.fit(model)
    assert trainer.current_epoch == epochs_run
    assert es.best_epoch == restored and es.best_score.item() == pytest.approx(values[restored])
    assert es.restored and model.w.item() == restored


def test_reused_instance_starts_fresh_unless_resuming(tmp_path):
    es = EarlyStopping("val_loss", patience=2, verbose=0)
    L.seed_everything(0)
    first = ScaledRegression()
    _trainer([es]).fit(first)
    first_best = es.best_epoch
    # a fresh model of the same shapes: the instance must not carry the first fit's best score or weights
    for i, hidden in enumerate([8, 5]):  # the same shapes, then other shapes
        torch.manual_seed(100 + i)
        model, rec = ScaledRegression(hidden=hidden), ValidationRecorder()
        trainer = _trainer([rec, es])
        trainer.fit(model)
        assert len(rec.records) > 1  # not stopped after one epoch by the first fit's best score
        _assert_restored(model, trainer, es, rec)
    assert first_best is not None
    # ... unless the fit resumes: the same instance then continues from the checkpoint's state
    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer([es, ckpt, CrashAt(first_best + 2)], tmp_path).fit(ScaledRegression())
    assert es.best_epoch == first_best
    es_wait = es.wait_count
    resumed_model = ScaledRegression()
    trainer = _trainer([es], tmp_path)
    with mock.patch.object(es, "_start_fresh", wraps=es._start_fresh) as fresh:
        trainer.fit(resumed_model, ckpt_path=tmp_path / "last.ckpt")
    fresh.assert_called_once()  # at setup, before the checkpoint's state was loaded into it
    assert es_wait >= 1 and es.best_epoch == first_best and es.restored
    sa, sb = first.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _warned(record, text: str) -> list[str]:
    return [str(w.message) for w in record if text in str(w.message)]


@pytest.mark.parametrize("case", ["unknown_monitor", "no_validation", "checkpoint_setup"])
def test_no_misleading_restore_message_after_a_real_error(tmp_path, case):
    es = EarlyStopping("val_acc" if case == "unknown_monitor" else "val_loss",
                       snapshot="checkpoint" if case == "checkpoint_setup" else "cpu")
    kwargs = {"limit_val_batches": 0} if case == "no_validation" else {}
    error, match = {
        "unknown_monitor": (RuntimeError, "`val_acc` which is not available"),
        "no_validation": (RuntimeError, "`val_loss` which is not available"),
        "checkpoint_setup": (MisconfigurationException, "ModelCheckpoint with monitor='val_loss'"),
    }[case]
    with warnings.catch_warnings(record=True) as record, pytest.raises(error, match=match):
        warnings.simplefilter("always")
        _trainer([es], tmp_path, max_epochs=2, **kwargs).fit(ScaledRegression())
    assert _warned(record, "no best weights") == [] and not es.restored


def test_nothing_to_restore_says_why():
    # strict=False and a metric never logged: no check ran (not "never improved")
    es = EarlyStopping("val_acc", strict=False, verbose=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer([es], max_epochs=2).fit(ScaledRegression())
    assert _warned(record, "no best weights") == [
        "EarlyStopping: no best weights to restore: no check ran (`val_acc` was never available)."
    ]
    # every value NaN and check_finite=False: checks ran, none gave a best
    es = EarlyStopping("val_loss", check_finite=False, verbose=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer([es], max_epochs=2).fit(ScaledRegression(nan_from_epoch=0))
    assert _warned(record, "no best weights") == [
        "EarlyStopping: no best weights to restore: none of the 2 values of `val_loss` was finite."
    ]


def test_best_epoch_is_logged_and_monitorable():
    from tests.memory_logger import MemoryLogger

    L.seed_everything(0)
    model, rec, logger = ScaledRegression(), ValidationRecorder(), MemoryLogger()
    es = EarlyStopping("val_loss", patience=2, verbose=0)
    trainer = _trainer([rec, es], logger=logger)
    trainer.fit(model)
    values = [v for _, v, _ in rec.records]
    running_best = [min(range(i + 1), key=lambda j: (values[j], j)) for i in range(len(values))]
    logged = [float(v) for _, v in logger.series(Keys.BEST_EPOCH)]
    assert logged == running_best  # one value per check: the best epoch so far
    steps = [s for s, _ in logger.series(Keys.BEST_EPOCH)]
    # on the rows of Lightning's own epoch metrics: val_loss and train epoch metrics of the same epoch
    assert steps == [s for s, _ in logger.series("val_loss")] == [4 * (e + 1) - 1 for e in range(len(values))]
    assert [float(v) for _, v in logger.series(Keys.RESTORED_EPOCH)] == [float(es.best_epoch)]
    assert trainer.callback_metrics[Keys.RESTORED_EPOCH].item() == es.best_epoch


def _entries(path) -> tuple[dict, object, dict]:
    ckpt = torch.load(path, weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("EarlyStopping")]
    entry = ckpt.get(CHECKPOINT_KEY, {}).get(EarlyStopping("val_loss").state_key)
    return state, entry, ckpt


def test_checkpoint_holds_the_weights_once_and_only_where_needed(tmp_path):
    L.seed_everything(0)
    model, rec = ScaledRegression(), ValidationRecorder()
    es = EarlyStopping("val_loss", patience=3, verbose=0)
    every = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    _trainer([rec, es, every], tmp_path).fit(model)
    values = [v for _, v, _ in rec.records]
    n = len(values)
    for epoch in range(n):
        state, entry, ckpt = _entries(tmp_path / f"epoch={epoch}.ckpt")
        # the callback state is plain: no weights in it
        assert not any(isinstance(v, dict) for v in state.values())
        best = min(range(epoch + 1), key=lambda j: (values[j], j))
        assert state["best_epoch"] == best
        if best == epoch:  # the checkpoint's own state_dict is the best: only a marker
            assert entry == "same_as_checkpoint_state_dict"
        else:  # one copy of the best epoch's weights (and buffers)
            ref = rec.records[best][2]
            assert sorted(entry) == sorted(ref)
            assert all(torch.equal(entry[k], ref[k]) for k in ref)
            assert not torch.equal(ckpt["state_dict"]["net.0.weight"], ref["net.0.weight"])
    # a run resumed from a checkpoint written at the best epoch restores that epoch (from the marker)
    best_epoch = es.best_epoch
    resumed, es2 = ScaledRegression(), EarlyStopping("val_loss", patience=3, verbose=0)
    _trainer([es2], tmp_path / "r").fit(resumed, ckpt_path=tmp_path / f"epoch={best_epoch}.ckpt")
    assert es2.best_epoch == best_epoch and es2.restored
    ref, now = rec.records[best_epoch][2], resumed.state_dict()
    assert all(torch.equal(now[k], ref[k]) for k in ref)
    # without save_weights_in_checkpoint: no entry at all
    es3 = EarlyStopping("val_loss", patience=1, save_weights_in_checkpoint=False, verbose=0)
    last = ModelCheckpoint(dirpath=tmp_path / "n", save_last=True)
    _trainer([es3, last], tmp_path / "n", max_epochs=3).fit(ScaledRegression())
    assert CHECKPOINT_KEY not in torch.load(tmp_path / "n" / "last.ckpt", weights_only=False)


def test_old_checkpoint_state_with_weights_inside_still_restores():
    net = ScaledRegression()
    weights = {k: v.clone() + 1 for k, v in local_snapshot_tensors(net).items()}
    es = EarlyStopping("val_loss")
    es.load_state_dict({**EarlyStopping("val_loss").state_dict(), "best_epoch": 0, "best_weights": weights})
    assert es._loaded_weights is weights


def test_no_per_step_hooks():
    # nothing runs on the per-step hot path: every hook the callback overrides is per epoch / validation / end
    from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

    per_step = [n for n in dir(Callback) if "batch" in n or "before_" in n or "after_backward" in n]
    for name in per_step:
        assert (
            getattr(EarlyStopping, name) is getattr(LightningEarlyStopping, name) is getattr(Callback, name)
        ), name


def test_no_restore_when_disabled():
    L.seed_everything(0)
    model, rec = ScaledRegression(), ValidationRecorder()
    es = EarlyStopping("val_loss", patience=2, restore_best_weights=False)
    _trainer([rec, es]).fit(model)
    assert not es.restored and not es._weights.has_value
    assert torch.equal(model.state_dict()["net.0.weight"], rec.records[-1][2]["net.0.weight"])


class CrashAt(Callback):
    """Raise at the start of ``epoch`` to simulate a crash."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("save_weights", [True, False])
def test_resume_after_best_restores_the_same_weights(tmp_path, save_weights):
    # Uninterrupted run
    L.seed_everything(0)
    model_a = ScaledRegression()
    es_a = EarlyStopping("val_loss", patience=3, save_weights_in_checkpoint=save_weights)
    _trainer([es_a], tmp_path / "a").fit(model_a)
    best_epoch = es_a.best_epoch
    assert best_epoch is not None and es_a.stopped_epoch > best_epoch + 1

    # Crashes after the epoch following the best one (last.ckpt holds the end of that epoch), then resumes
    L.seed_everything(0)
    model_b = ScaledRegression()
    es_b = EarlyStopping("val_loss", patience=3, save_weights_in_checkpoint=save_weights)
    last = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer([es_b, last, CrashAt(best_epoch + 2)], tmp_path / "b").fit(model_b)
    path = tmp_path / "b" / "last.ckpt"
    _, entry, _ = _entries(path)
    assert isinstance(entry, dict) == save_weights and (entry is None) == (not save_weights)

    model_c = ScaledRegression()
    es_c = EarlyStopping("val_loss", patience=3, save_weights_in_checkpoint=save_weights)
    _trainer([es_c], tmp_path / "c").fit(model_c, ckpt_path=path)
    assert es_c.best_epoch == best_epoch and es_c.stopped_epoch == es_a.stopped_epoch
    assert torch.equal(es_c.best_score, es_a.best_score)
    sa, sc = model_a.state_dict(), model_c.state_dict()
    same = all(torch.equal(sa[k], sc[k]) for k in sa)
    # without the weights in the checkpoint, the pre-resume best cannot be restored: documented limitation
    assert same == save_weights
    assert es_c.restored == save_weights


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"`start_from_epoch` must be an int >= 0; got -1"):
        EarlyStopping("val_loss", start_from_epoch=-1)
    with pytest.raises(ValueError, match=r"one of 'cpu', 'device', 'checkpoint'; got 'disk'"):
        EarlyStopping("val_loss", snapshot="disk")
    with pytest.raises(ValueError, match="baseline"):
        EarlyStopping("val_loss", baseline=float("nan"))
    with pytest.raises(MisconfigurationException, match="`mode` can be min, max, got avg"):
        EarlyStopping("val_loss", mode="avg")
    # checkpoint mode without a matching ModelCheckpoint (wrong mode here)
    es = EarlyStopping("val_loss", snapshot="checkpoint")
    wrong = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="max")
    with pytest.raises(MisconfigurationException, match="monitor='val_loss', mode='min'"):
        _trainer([es, wrong], tmp_path, max_epochs=1).fit(ScaledRegression())
    # monitor never logged: Lightning's message listing the logged keys
    es = EarlyStopping("val_acc")
    with pytest.raises(RuntimeError, match="`val_acc` which is not available.*`val_loss`"):
        _trainer([es], max_epochs=1).fit(ScaledRegression())


def test_weight_snapshot_reuses_buffers_and_restores_bn():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    net.train()
    net(torch.randn(8, 3))
    ref = copy.deepcopy(net.state_dict())
    snap = WeightSnapshot("cpu")
    snap.capture(local_snapshot_tensors(net))
    ptrs = [b.data_ptr() for b in snap.buffers]
    assert snap.nbytes == sum(t.numel() * t.element_size() for t in ref.values())
    for _ in range(3):
        net(torch.randn(8, 3) * 5)
        with torch.no_grad():
            net[0].weight.add_(1.0)
    snap.restore(local_snapshot_tensors(net))
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    snap.capture(local_snapshot_tensors(net))
    assert [b.data_ptr() for b in snap.buffers] == ptrs  # allocated once
    # tied weights appear once
    tied = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    tied[1].weight = tied[0].weight
    assert list(local_snapshot_tensors(tied)) == ["0.weight"]


def test_dtensor_parameters_snapshot_only_the_local_shard(tmp_path):
    # FSDP2 / tensor-parallel parameters are DTensors: public in torch.distributed.tensor from torch 2.5,
    # in torch.distributed._tensor on torch 2.4 (a missed look-up there snapshotted them as plain tensors)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lightning_reg._shared.torch_compat import DTensor

    try:
        from torch.distributed.tensor import Shard
    except ImportError:  # torch 2.4
        from torch.distributed._tensor import Shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        net = nn.Linear(4, 2)
        local = net.weight.detach().clone()
        net.weight = nn.Parameter(DTensor.from_local(local, mesh, [Shard(0)]))
        assert is_sharded_module(net)
        tensors = local_snapshot_tensors(net)
        assert not isinstance(tensors["weight"], DTensor) and torch.equal(tensors["weight"], local)
        assert not is_sharded_module(nn.Linear(4, 2))
    finally:
        dist.destroy_process_group()


def test_agree_on_score():
    # identical values are kept bit for bit; a float32 mean of three copies of 2.9 would round
    x = torch.tensor(2.9, dtype=torch.float32)
    same = x.repeat(3)
    assert not torch.equal(same.mean(), x)
    assert torch.equal(agree_on_score(same), x)
    assert agree_on_score(torch.tensor([1.0, 2.0, 4.0])).item() == pytest.approx(7 / 3)
    assert torch.isnan(agree_on_score(torch.tensor([1.0, float("nan")])))


@pytest.mark.gpu
@pytest.mark.parametrize("snapshot", ["cpu", "device"])
def test_cuda_snapshot_modes(snapshot):
    L.seed_everything(0)
    model, rec = ScaledRegression(), ValidationRecorder()
    es = EarlyStopping("val_loss", patience=2, snapshot=snapshot)
    trainer = _trainer([rec, es], accelerator="cuda", devices=1, deterministic=False)
    trainer.fit(model)
    if snapshot == "cpu":
        assert all(b.device.type == "cpu" and b.is_pinned() for b in es._weights.buffers)
    else:
        assert all(b.device.type == "cuda" for b in es._weights.buffers)
    _assert_restored(model, trainer, es, rec)


def _full_state(trainer) -> dict[str, torch.Tensor]:
    """The whole model's state through the strategy (gathers FSDP shards), as CPU tensors."""
    sd = trainer.strategy.lightning_module_state_dict()
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone() for k, v in sd.items()
    }


class StrategyRecorder(ValidationRecorder):
    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            value = trainer.callback_metrics["val_loss"].item()
            self.records.append((trainer.current_epoch, value, _full_state(trainer)))


class FullyShardedRegression(ScaledRegression):
    def configure_model(self):
        from lightning_reg._shared.torch_compat import fully_shard

        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["fsdp1", "fsdp2", "deepspeed3"])
def test_sharded_strategies_restore_local_shards(kind):
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if kind == "fsdp1":
        strategy, model = FSDPStrategy(), ScaledRegression()
    elif kind == "fsdp2":
        strategy = ModelParallelStrategy(
            data_parallel_size=1, tensor_parallel_size=1, save_distributed_checkpoint=False
        )
        model = FullyShardedRegression()
    else:
        pytest.importorskip("deepspeed")
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy, model = DeepSpeedStrategy(stage=3), ScaledRegression()
    L.seed_everything(0)
    rec = StrategyRecorder()
    es = EarlyStopping("val_loss", patience=2)
    trainer = _trainer([rec, es], accelerator="cuda", devices=1, strategy=strategy, deterministic=False)
    trainer.fit(model)
    assert es._sharded  # the sharded path (local shards, no gather) was taken
    epoch, value, state = rec.expected_best()
    assert epoch < rec.records[-1][0] and es.best_epoch == epoch and es.restored
    now = _full_state(trainer)
    for k in state:
        assert torch.equal(now[k], state[k]), k
    assert not torch.equal(now["net.0.weight"], rec.records[-1][2]["net.0.weight"])
    (metrics,) = trainer.validate(model, verbose=False)
    assert metrics["val_loss"] == pytest.approx(value, rel=1e-6)


def test_warns_when_weights_moved_since_validation():
    # validation after batch 3 of 4, check at the end of the epoch: the weights changed in between
    L.seed_everything(0)
    es = EarlyStopping("val_loss", patience=2, check_on_train_epoch_end=True)
    with pytest.warns(UserWarning, match="last validation ran at step 3"):
        _trainer([es], max_epochs=2, val_check_interval=3).fit(ScaledRegression())


def test_mid_epoch_validation_snapshots_the_validated_weights():
    # two validations per epoch (after batches 2 and 4): Lightning then checks after validation, and the
    # snapshot must be the weights of the best validation, even when that one ran mid-epoch
    L.seed_everything(0)
    model, rec = ScaledRegression(), ValidationRecorder()
    es = EarlyStopping("val_loss", patience=3)
    trainer = _trainer([rec, es], val_check_interval=2)
    trainer.fit(model)
    assert len(rec.records) > 2 * (rec.records[-1][0])  # two validations per epoch
    values = [v for _, v, _ in rec.records]
    i_best = values.index(min(values))
    assert i_best < len(values) - 1
    assert es.best_step == 2 * (i_best + 1)
    state = rec.records[i_best][2]
    now = model.state_dict()
    assert all(torch.equal(now[k], state[k]) for k in state)
    (metrics,) = trainer.validate(model, verbose=False)
    assert metrics["val_loss"] == values[i_best] == es.best_score.item()


def test_configurable_from_jsonargparse():
    # LightningCLI builds callbacks through jsonargparse from the constructor's type hints
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(EarlyStopping, "es")
    cfg = parser.parse_args(["--es.monitor=val_loss", "--es.snapshot=device", "--es.start_from_epoch=2"])
    es = parser.instantiate_classes(cfg).es
    assert (es.snapshot, es.start_from_epoch, es.restore_best_weights) == ("device", 2, True)
    with pytest.raises(jsonargparse.ArgumentError):
        parser.parse_args(["--es.monitor=v", "--es.snapshot=disk"])


def test_swa_with_restore_warns_and_without_restore_keeps_the_average():
    """Both replace the weights at the end of fit: the restore would discard SWA's average silently."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    def fit(restore: bool):
        L.seed_everything(0)
        model = ScaledRegression()
        swa = StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=2)
        es = EarlyStopping("val_loss", patience=50, restore_best_weights=restore, verbose=0)
        _trainer([es, swa], max_epochs=5).fit(model)
        return model, swa

    with pytest.warns(UserWarning, match=r"StochasticWeightAveraging both replace the weights.*discards it"):
        restored, swa_r = fit(True)
    averaged_r = dict(swa_r._average_model.named_parameters())  # what the warning says is discarded
    assert not all(torch.equal(p, averaged_r[n]) for n, p in restored.named_parameters())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*both replace the weights")
        model, swa = fit(False)
    # without the restore the model ends with SWA's average (its AveragedModel's parameters)
    averaged = dict(swa._average_model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, averaged[name]), name


class AccuracySequence(ScaledRegression):
    """Logs a rising ``val_acc`` (higher is better) instead of the loss."""

    ACC = [0.5, 0.625, 0.75, 0.875, 0.75, 0.625]

    def validation_step(self, batch, batch_idx):
        self.log("val_acc", self.ACC[self.current_epoch])


def test_a_score_to_maximise_with_mode_min_warns_once_naming_the_key_and_the_fix():
    def fit(es):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            es = es()
            _trainer([es], max_epochs=6).fit(AccuracySequence())
        return es, [str(w.message) for w in record if "names a score" in str(w.message)]

    es, msgs = fit(lambda: EarlyStopping("val_acc", patience=100, verbose=0))
    # mode="min" (Lightning's default) keeps the worst accuracy: the warning is the only sign of it
    assert es.best_epoch == 0 and es.best_score.item() == 0.5
    assert len(msgs) == 1
    assert "EarlyStopping(monitor='val_acc') runs with mode='min' (the default)" in msgs[0]
    assert "'acc' names a score where higher is better" in msgs[0] and "Pass mode='max'" in msgs[0]
    es, msgs = fit(lambda: EarlyStopping("val_acc", mode="max", patience=100, verbose=0))
    assert es.best_epoch == 3 and msgs == []
    for monitor in ("val/Top1_epoch", "valid-F1", "val.auroc"):
        with pytest.warns(UserWarning, match=f"monitor={monitor!r}.*names a score"):
            EarlyStopping(monitor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for monitor in ("val_loss", "val_acc_loss", "val_error"):
            EarlyStopping(monitor)
