"""Projected Adam ascent on ReLU lower slopes, keeping the best slopes seen (alpha-CROWN's optimiser).

For ``objective(slopes) -> (B, R)`` row lower bounds and slopes in ``[0, 1]``,

    α ← Π_[0,1](α + Adam_{η_t}(∇_α Σ_rows objective(α))),      η_t = lr · lr_decay^t   (t = 0, 1, ...)

inside a ``lax.fori_loop`` (jittable, vmappable); ``lr_decay`` = 0.98 is auto_LiRPA's ``ExponentialLR``
schedule, 1 a constant learning rate. The returned slopes are, per *row* (each row's bound
depends only on its own slopes: leaves shaped (B, R, *neurons)), or with ``per_example`` per *example*
(slopes shared by the rows of an example: leaves shaped (B, ...), scored by the sum of its row bounds),
the best ones seen, the start included, so the result is never worse than ``init``.

:func:`tracked_ascent` is the same ascent for objectives that carry a state from step to step (e.g. the
tightest intermediate bounds seen so far) and score every slope leaf on its own rows: each leaf keeps
its slopes, elementwise over the leading axes of its score, where that score was the best seen, and the
best value of every row is kept too (``best[b, r] = max_t value_t[b, r]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def slope_optimizer(lr: float | jax.Array, lr_decay: float | jax.Array = 1.0) -> optax.GradientTransformation:
    """Adam at the learning rate ``η_t = lr · lr_decay^t`` of its ``t``-th update (``lr``, ``lr_decay`` may
    be traced)."""
    return optax.adam(lambda count: lr * jnp.power(lr_decay, count))


def projected_ascent(
    objective: Callable[[Any], jax.Array],
    init: Any,
    steps: int,
    lr: float | jax.Array,
    *,
    per_example: bool = False,
    lr_decay: float | jax.Array = 1.0,
) -> Any:
    """The best slopes of ``steps`` projected Adam steps from ``init`` (see the module doc)."""
    leaves = jax.tree_util.tree_leaves(init)
    if steps == 0 or not leaves:
        return init
    optimizer = slope_optimizer(lr, lr_decay)
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


def tracked_ascent(
    objective: Callable[[Any, Any], tuple[jax.Array, tuple[Any, Any]]],
    init: Any,
    state: Any,
    steps: int,
    lr: float | jax.Array,
    lr_decay: float | jax.Array = 1.0,
) -> tuple[Any, Any, jax.Array]:
    """``(best slopes, final state, best row values)`` of ``steps`` projected Adam steps from ``init``.

    ``objective(slopes, state) -> (value (B, R), (scores, new_state))``: the gradient of ``Σ value`` moves
    the slopes; ``scores`` has the structure of the slopes, each leaf's score shaped like its leading axes
    (e.g. (B,) per example, (B, R) per row); a slope is kept where its score beats the best seen (the
    start included). With ``steps = 0`` the result is ``(init, state, -inf)``.
    """
    value_shape, (score_shapes, _) = jax.eval_shape(objective, init, state)
    best_value = jnp.full(value_shape.shape, -jnp.inf, value_shape.dtype)
    if steps == 0 or not jax.tree_util.tree_leaves(init):
        return init, state, best_value
    optimizer = slope_optimizer(lr, lr_decay)
    best_scores = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, -jnp.inf, s.dtype), score_shapes)

    def keep(new: jax.Array, old: jax.Array, improved: jax.Array) -> jax.Array:
        return jnp.where(improved.reshape(improved.shape + (1,) * (new.ndim - improved.ndim)), new, old)

    def step(_: int, carry: tuple) -> tuple:
        slopes, opt_state, state, best_slopes, best_scores, best_value = carry
        value, vjp, (scores, state) = jax.vjp(lambda s: objective(s, state), slopes, has_aux=True)
        (grad,) = vjp(jnp.ones_like(value))
        improved = jax.tree_util.tree_map(jnp.greater, scores, best_scores)
        best_slopes = jax.tree_util.tree_map(keep, slopes, best_slopes, improved)
        best_scores = jax.tree_util.tree_map(jnp.maximum, scores, best_scores)
        updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grad), opt_state, slopes)
        slopes = jax.tree_util.tree_map(lambda s, u: jnp.clip(s + u, 0.0, 1.0), slopes, updates)
        return slopes, opt_state, state, best_slopes, best_scores, jnp.maximum(value, best_value)

    carry = (init, optimizer.init(init), state, init, best_scores, best_value)
    _, _, state, best_slopes, _, best_value = jax.lax.fori_loop(0, steps, step, carry)
    return best_slopes, state, best_value
