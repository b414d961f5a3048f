"""Which neurons of a ReLU layer get back-substituted rows in CROWN's intermediate passes.

A neuron whose forward interval ``[l, u]`` (interval arithmetic from the previous layer's bounds) is
stable, ``l ≥ 0`` or ``u ≤ 0``, has an exact relaxation (``y = x`` or ``y = 0``) whatever tighter bounds
a back-substitution would give, so only the *unstable* neurons ``l < 0 < u`` need rows.

Under ``jit`` the number of rows must be static, so a layer is given a *budget* of ``k`` neurons per
example:

    budget None (or ≥ neurons in the layer):  every neuron gets rows (the exact CROWN pass);
    budget k:   the k unstable neurons of widest interval ``u - l`` per example (``lax.top_k``) get rows;
                every other neuron keeps its (sound, looser) interval bounds.

With ``k`` ≥ the number of unstable neurons of every example both give the same bounds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.bounds.relu_slopes import crossing_mask


def check_budget(budget: int | None) -> None:
    """``ValueError`` unless ``budget`` is None or a positive Python int."""
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"unstable_budget must be None (every neuron) or a positive int, got {budget!r}")


def rows_needed(budget: int | None, neurons: int) -> int | None:
    """Rows per example of a layer of ``neurons`` neurons: ``None`` (all, shared by the batch) or ``k``."""
    return None if budget is None or budget >= neurons else budget


def select_unstable(lower: jax.Array, upper: jax.Array, k: int) -> jax.Array:
    """Flat indices (B, k) of the ``k`` unstable neurons of widest interval per example (then stable ones)."""
    batch = lower.shape[0]
    width = (upper - lower).reshape(batch, -1)
    score = jnp.where(crossing_mask(lower, upper).reshape(batch, -1), width, -1.0)
    return jax.lax.top_k(score, k)[1]


def scatter_refined(
    lower: jax.Array, upper: jax.Array, index: jax.Array | None, new_lower: jax.Array, new_upper: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Bounds with the unstable neurons among ``index`` (B, k) (``None``: all, in order) set to the refined
    ``new_lower``/``new_upper`` (B, k or N); the other neurons keep ``lower``/``upper``."""
    batch, shape = lower.shape[0], lower.shape[1:]
    flat_lo, flat_hi = lower.reshape(batch, -1), upper.reshape(batch, -1)
    unstable = crossing_mask(flat_lo, flat_hi)
    if index is None:
        out_lo = jnp.where(unstable, new_lower, flat_lo)
        out_hi = jnp.where(unstable, new_upper, flat_hi)
    else:
        rows = jnp.arange(batch)[:, None]
        picked = unstable[rows, index]
        out_lo = flat_lo.at[rows, index].set(jnp.where(picked, new_lower, flat_lo[rows, index]))
        out_hi = flat_hi.at[rows, index].set(jnp.where(picked, new_upper, flat_hi[rows, index]))
    return out_lo.reshape(batch, *shape), out_hi.reshape(batch, *shape)
