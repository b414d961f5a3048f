"""Projected Adam ascent on ReLU lower slopes, keeping the best slopes seen (alpha-CROWN's optimiser).

For ``objective(slopes) -> (B, R)`` row lower bounds and slopes in ``[0, 1]``,

    α ← Π_[0,1](α + Adam(∇_α Σ_rows objective(α))),

inside a ``lax.fori_loop`` (jittable, vmappable). The returned slopes are, per *row* (each row's bound
depends only on its own slopes: leaves shaped (B, R, *neurons)), or with ``per_example`` per *example*
(slopes shared by the rows of an example: leaves shaped (B, ...), scored by the sum of its row bounds),
the best ones seen, the start included, so the result is never worse than ``init``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def projected_ascent(
    objective: Callable[[Any], jax.Array], init: Any, steps: int, lr: float | jax.Array, *, per_example: bool = False
) -> Any:
    """The best slopes of ``steps`` projected Adam steps from ``init`` (see the module doc)."""
    leaves = jax.tree_util.tree_leaves(init)
    if steps == 0 or not leaves:
        return init
    optimizer = optax.adam(lr)
    score = (lambda value: jnp.sum(value, axis=1)) if per_example else (lambda value: value)

    def keep_best(improved: jax.Array, new: Any, old: Any) -> Any:
        pick = lambda n, o: jnp.where(improved.reshape(improved.shape + (1,) * (n.ndim - improved.ndim)), n, o)
        return jax.tree_util.tree_map(pick, new, old)

    def step(_: int, carry: tuple) -> tuple:
        slopes, state, best_slopes, best = carry
        value, vjp = jax.vjp(objective, slopes)
        (grad,) = vjp(jnp.ones_like(value))
        total = score(value)
        improved = total > best
        best_slopes, best = keep_best(improved, slopes, best_slopes), jnp.maximum(total, best)
        updates, state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grad), state, slopes)
        slopes = jax.tree_util.tree_map(lambda s, u: jnp.clip(s + u, 0.0, 1.0), slopes, updates)
        return slopes, state, best_slopes, best

    first = leaves[0]
    best = jnp.full(first.shape[: 1 if per_example else 2], -jnp.inf, first.dtype)
    carry = (init, optimizer.init(init), init, best)
    return jax.lax.fori_loop(0, steps, step, carry)[2]
