"""The input region: the ℓ∞ ball of radius ε around ``x``, clipped to the data range.

lower = max(x - ε, lo),   upper = min(x + ε, hi)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_eps(eps: float | jax.Array) -> None:
    """Raise ``ValueError`` for a negative or non-finite ε (when ε is concrete, i.e. not traced)."""
    if isinstance(eps, jax.core.Tracer):
        return
    arr = np.asarray(eps)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"eps must be finite, got {eps}")
    if np.any(arr < 0):
        raise ValueError(f"eps must be >= 0, got {eps}")


def input_box(x: jax.Array, eps: float | jax.Array, lo: float = 0.0, hi: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """``(lower, upper)`` of the clipped ε-ball. ``eps`` is a scalar or one value per example."""
    check_eps(eps)
    eps = jnp.asarray(eps, dtype=x.dtype)
    if eps.ndim == 1:
        eps = eps.reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.clip(x - eps, lo, hi), jnp.clip(x + eps, lo, hi)
