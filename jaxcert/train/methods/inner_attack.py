"""PGD inside a training loss: the attack point is a constant of the loss.

    x* = stop_gradient(PGD(stop_gradient(θ); x, y)),

ℓ∞ sign steps of size ``α = step_rel · ε_t`` (each method's paper sets ``step_rel``) projected onto the box
``[lo, hi]`` ∩ ``[x - ε, x + ε]`` (:func:`jaxcert.attacks.pgd`), the CE as the attack loss, one restart, and
the point of smallest classification margin among the iterates returned. The weights are held constant
during the attack and no gradient flows through ``x*``: the loss is differentiated at the fixed point.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxcert.attacks import pgd


def inner_pgd(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    eps: jax.Array | float,
    key: jax.Array,
    *,
    steps: int,
    step_size: jax.Array | float,
    lo: jax.Array | float,
    hi: jax.Array | float,
) -> jax.Array:
    """``stop_gradient`` of the PGD point of ``logits_fn`` (whose weights the caller has stopped) in the
    ``eps``-box around ``x`` clipped to ``[lo, hi]`` (``eps``, ``step_size``, ``lo``, ``hi``: scalars or
    arrays shaped like ``x``)."""
    if steps < 1:
        raise ValueError(f"the PGD inside the loss needs steps >= 1, got {steps}")
    point = pgd(logits_fn, x, y, eps, key=key, steps=steps, step_size=step_size, lo=lo, hi=hi)
    return jax.lax.stop_gradient(point)
