"""An attack from given start points: projected sign-gradient descent on the margin inside the box.

Branch and bound looks for counterexamples where its bounds are worst: from each domain's bound
minimiser ``x₀`` (the corner of the input box minimising the domain's linear lower bound of its worst
margin row), ``steps`` iterations of

    x ← clip(x - η · sign(∇ₓ m(x)), lower, upper),     m(x) = f(x)_y - max_{j≠y} f(x)_j,   η = (upper - lower) / 4

keeping the point of smallest margin seen (``x₀`` included). A point with ``m < 0`` is misclassified;
:mod:`jaxcert.certify` checks it again by a forward pass before calling the example falsified.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcert.attacks.pgd import classification_margin


def descend_margin(
    logits_fn: Callable[[jax.Array], jax.Array],
    start: jax.Array,
    y: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
    steps: int,
) -> tuple[jax.Array, jax.Array]:
    """``(x, margin)`` per start point (D, *input): the smallest-margin point of the descent (module doc);
    ``lower``/``upper`` broadcast against ``start``, ``y`` is (D,)."""
    step_size = (upper - lower) / 4

    def margin(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        m = classification_margin(logits_fn(x), y)
        return jnp.sum(m), m

    def keep(best: tuple[jax.Array, jax.Array], x: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
        worse = m < best[1]
        return jnp.where(worse.reshape((-1,) + (1,) * (x.ndim - 1)), x, best[0]), jnp.where(worse, m, best[1])

    def step(_: int, carry: tuple) -> tuple:
        x, best = carry
        (_, m), grad = jax.value_and_grad(margin, has_aux=True)(x)
        best = keep(best, x, m)
        return jnp.clip(x - step_size * jnp.sign(grad), lower, upper), best

    start = jnp.clip(start, lower, upper)
    x, best = jax.lax.fori_loop(0, steps, step, (start, (start, classification_margin(logits_fn(start), y))))
    return keep(best, x, classification_margin(logits_fn(x), y))
