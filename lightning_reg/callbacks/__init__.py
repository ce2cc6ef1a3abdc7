"""Lightning callbacks: thin shells over the pure-PyTorch modules of :mod:`lightning_reg`."""

__all__: list[str] = []

# --- early stopping (issue 3) ---
from lightning_reg.callbacks.early_stopping import EarlyStopping  # noqa: E402 # isort: skip

__all__ += ["EarlyStopping"]

# --- gradients (issue 4) ---

# --- stochastic depth (issue 5) ---

# --- overfitting (issue 6) ---

# --- frozen BatchNorm (issue 9) ---
