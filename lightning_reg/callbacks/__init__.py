"""Lightning callbacks: thin shells over the pure-PyTorch modules of :mod:`lightning_reg`."""

__all__: list[str] = []

# --- early stopping (issue 3) ---

# --- gradients (issue 4) ---

# --- stochastic depth (issue 5) ---

# --- overfitting (issue 6) ---

# --- frozen BatchNorm (issue 9) ---
from lightning_reg.callbacks.freeze_batchnorm import FreezeBatchNorm  # noqa: E402  # isort: skip
from lightning_reg.callbacks.proximal_l1 import ProximalL1  # noqa: E402  # isort: skip

__all__ += ["FreezeBatchNorm", "ProximalL1"]
