"""Smoothness of the loss landscape along the gradient step (Lee et al., 2021, "Towards better
understanding of training certifiably robust models against adversarial examples").

With ``g = ∇L(θ)`` (trainable weights only), step size η and ``θ_c = θ - c η g`` for ``c ∈ [0, 1]``:

    loss variation     V = max_c L(θ_c) - min_c L(θ_c)
    gradient cosine    cos_c = <g, g_c> / (‖g‖ ‖g_c‖),   g_c = ∇L(θ_c)      (summary: min_c cos_c)
    gradient change    Δ_c = ‖g_c - g‖                                     (summary: max_c Δ_c)

A smooth landscape has a small V for the step, gradients that keep their direction (cos ≈ 1) and change
little; a relaxation whose bounds jump (CROWN's min-area slope) or bend sharply gives a larger V and a
lower cosine. All ``c`` are evaluated in one vmapped ``value_and_grad`` call.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcert.analysis.directions import add_scaled, tree_cosine, tree_norm, zero_frozen
from jaxcert.analysis.objective import LossFn
from jaxcert.analysis.slices import map_points
from jaxcert.nets.network import LayerParams


class StepLandscape(NamedTuple):
    """The loss and gradient along ``θ - c η g``; per-``c`` arrays and the three summaries."""

    cs: jax.Array
    losses: jax.Array
    cosines: jax.Array
    gradient_changes: jax.Array
    loss_variation: jax.Array
    min_cosine: jax.Array
    max_gradient_change: jax.Array


@functools.partial(jax.jit, static_argnames=("loss_fn", "n_points", "batch_size"))
def _landscape(loss_fn, params, lr, n_points, batch_size):  # type: ignore[no-untyped-def]
    grad = lambda theta: zero_frozen(jax.grad(loss_fn)(theta), params)
    g = grad(params)
    cs = jnp.linspace(0.0, 1.0, n_points)

    def at(c: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        theta = add_scaled(params, -c * lr, g)
        loss, g_c = jax.value_and_grad(loss_fn)(theta)
        g_c = zero_frozen(g_c, params)
        return loss, tree_cosine(g, g_c), tree_norm(jax.tree.map(jnp.subtract, g_c, g))

    losses, cosines, changes = map_points(at, cs, batch_size)
    return StepLandscape(
        cs, losses, cosines, changes, jnp.max(losses) - jnp.min(losses), jnp.min(cosines), jnp.max(changes)
    )


def gradient_step_landscape(
    loss_fn: LossFn, params: LayerParams, lr: float | jax.Array, n_points: int = 11, batch_size: int | None = None
) -> StepLandscape:
    """Loss variation, gradient cosine and gradient change along ``θ - c·lr·g`` on ``n_points`` values of
    ``c`` in [0, 1] (see module docstring)."""
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2 (c = 0 and c = 1 at least), got {n_points}")
    if not isinstance(lr, jax.core.Tracer) and not float(lr) > 0:
        raise ValueError(f"the step size lr must be > 0, got {lr}")
    return _landscape(loss_fn, params, lr, n_points, batch_size)
