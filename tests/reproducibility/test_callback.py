"""ReproducibleResume on one process: resumed runs end bitwise equal to the uninterrupted run.

The uninterrupted 6-epoch run writes a checkpoint at the end of every epoch and one mid-epoch (step 19 of
48); a run resumed from the end of epoch 3, or from step 19, must end with exactly the uninterrupted run's
weights, with every stochastic regularizer on and no reseeding. Without the callback the same resume ends
elsewhere (the control that shows the comparison can fail).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_reg import ReproducibleResume
from lightning_reg._shared.lightning_compat import LIGHTNING_EXACT_MID_EPOCH_RESUME
from lightning_reg.reproducibility import callback as reproducibility_callback
from tests.reproducibility._setup import MID_STEP, run, weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    out = tmp_path_factory.mktemp("uninterrupted")
    model, trainer = run(out, save=True)
    assert trainer.global_step == 48
    return weights(model), out


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_at_an_epoch_boundary_is_bitwise_exact(uninterrupted, tmp_path: Path) -> None:
    full, out = uninterrupted
    ckpt = str(out / "ep2.ckpt")  # the end of the third epoch
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["ReproducibleResume"]  # plain values only
    assert saved["world_size"] == 1 and saved["mid_epoch"] is False and len(saved["ranks"]) == 1
    assert set(saved["ranks"][0]) == {"torch", "cuda", "numpy", "python"}
    model, trainer = run(tmp_path, ckpt_path=ckpt)
    assert trainer.global_step == 48
    (cb,) = [c for c in trainer.callbacks if isinstance(c, ReproducibleResume)]
    assert cb.restored_at == "on_fit_start"
    _assert_equal(weights(model), full)


@pytest.mark.skipif(
    not LIGHTNING_EXACT_MID_EPOCH_RESUME, reason="Lightning < 2.5 continues a mid-epoch checkpoint elsewhere"
)
def test_resume_mid_epoch_with_a_stateful_loader_is_bitwise_exact(uninterrupted, tmp_path: Path) -> None:
    full, out = uninterrupted
    ckpt = str(out / f"st{MID_STEP}.ckpt")
    assert torch.load(ckpt, weights_only=True)["callbacks"]["ReproducibleResume"]["mid_epoch"] is True
    model, trainer = run(tmp_path, ckpt_path=ckpt)
    (cb,) = [c for c in trainer.callbacks if isinstance(c, ReproducibleResume)]
    assert cb.restored_at == "on_train_start"
    _assert_equal(weights(model), full)


def test_a_mid_epoch_resume_on_lightning_before_2_5_says_it_cannot_be_exact(
    uninterrupted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = uninterrupted
    monkeypatch.setattr(reproducibility_callback, "LIGHTNING_EXACT_MID_EPOCH_RESUME", False)
    with pytest.warns(UserWarning, match=r"saved mid-epoch and Lightning < 2\.5 does not continue"):
        run(tmp_path, ckpt_path=str(out / f"st{MID_STEP}.ckpt"))
    with warnings.catch_warnings():  # an end-of-epoch checkpoint is exact on every release: no warning
        warnings.filterwarnings("error", message=".*saved mid-epoch.*")
        run(tmp_path / "b", ckpt_path=str(out / "ep2.ckpt"))


def test_without_the_callback_the_resume_draws_differently(uninterrupted, tmp_path: Path) -> None:
    full, out = uninterrupted
    model, _ = run(tmp_path, ckpt_path=str(out / "ep2.ckpt"), resume_rng=False)
    assert not all(torch.equal(v, full[k]) for k, v in weights(model).items())


def test_a_checkpoint_without_rng_states_resumes_with_a_warning(tmp_path: Path) -> None:
    _, trainer = run(tmp_path, resume_rng=False, save=True, max_epochs=1)
    with pytest.warns(UserWarning, match="the checkpoint holds no RNG states"):
        run(tmp_path / "b", ckpt_path=str(tmp_path / "ep0.ckpt"), max_epochs=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cuda_devices": "all"}, TypeError, "`cuda_devices` must be 'auto' or a list of CUDA device"),
        ({"cuda_devices": [-1]}, ValueError, "device indices >= 0; got \\[-1\\]"),
        ({"numpy": "yes"}, TypeError, "`numpy` must be a bool"),
        ({"verbose": 5}, ValueError, "`verbose` must be an int in \\[0, 2\\]"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ReproducibleResume(**kwargs)


def test_two_instances_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `ReproducibleResume`"):
        run(tmp_path, max_epochs=1, callbacks_extra=[ReproducibleResume()])


@pytest.mark.gpu
def test_resume_on_cuda_restores_the_device_generator(tmp_path: Path) -> None:
    full, trainer = run(tmp_path / "full", save=True, accelerator="gpu")
    (cb,) = [c for c in trainer.callbacks if isinstance(c, ReproducibleResume)]
    saved = torch.load(tmp_path / "full" / "ep2.ckpt", weights_only=True)["callbacks"]["ReproducibleResume"]
    assert list(saved["ranks"][0]["cuda"]) == [torch.cuda.current_device()]
    for ckpt in ("ep2.ckpt", f"st{MID_STEP}.ckpt"):
        model, _ = run(tmp_path / ckpt, ckpt_path=str(tmp_path / "full" / ckpt), accelerator="gpu")
        _assert_equal(weights(model), weights(full))


def test_configurable_from_lightning_cli_yaml(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--callbacks", type=list[L.Callback])
    config = tmp_path / "trainer.yaml"
    config.write_text(
        "callbacks:\n"
        "  - class_path: lightning_reg.ReproducibleResume\n"
        "    init_args: {cuda_devices: [0], python: false, verbose: 0}\n"
    )
    cfg = parser.instantiate_classes(parser.parse_path(str(config)))
    (cb,) = cfg.callbacks
    assert isinstance(cb, ReproducibleResume)
    assert (cb.cuda_devices, cb.numpy, cb.python, cb.verbose) == ([0], True, False, 0)
