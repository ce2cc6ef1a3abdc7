"""Lightning callbacks: thin shells over the pure-PyTorch modules of :mod:`lightning_reg`."""

__all__: list[str] = []

# --- early stopping (issue 3) ---
from lightning_reg.callbacks.early_stopping import EarlyStopping  # noqa: E402 # isort: skip

__all__ += ["EarlyStopping"]

# --- gradients (issue 4) ---
from lightning_reg.callbacks.gradient_clipping import GradientClipping  # noqa: E402
from lightning_reg.callbacks.gradient_monitor import GradientMonitor  # noqa: E402

__all__ += ["GradientClipping", "GradientMonitor"]

# --- stochastic depth (issue 5) ---
from lightning_reg.callbacks.stochastic_depth import StochasticDepthScheduler  # noqa: E402

__all__ += ["StochasticDepthScheduler"]

# --- overfitting (issue 6) ---
from lightning_reg.callbacks.overfitting_monitor import OverfittingMonitor  # noqa: E402

__all__ += ["OverfittingMonitor"]

# --- frozen BatchNorm (issue 9) ---
from lightning_reg.callbacks.freeze_batchnorm import FreezeBatchNorm  # noqa: E402  # isort: skip
from lightning_reg.callbacks.proximal_l1 import ProximalL1  # noqa: E402  # isort: skip

__all__ += ["FreezeBatchNorm", "ProximalL1"]
