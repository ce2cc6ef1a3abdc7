"""Lightning callbacks: thin shells over the pure-PyTorch modules of :mod:`lightning_reg`."""

__all__: list[str] = []

# --- early stopping (issue 3) ---

# --- gradients (issue 4) ---
from lightning_reg.callbacks.gradient_clipping import GradientClipping  # noqa: E402
from lightning_reg.callbacks.gradient_monitor import GradientMonitor  # noqa: E402

__all__ += ["GradientClipping", "GradientMonitor"]

# --- stochastic depth (issue 5) ---

# --- overfitting (issue 6) ---

# --- frozen BatchNorm (issue 9) ---
