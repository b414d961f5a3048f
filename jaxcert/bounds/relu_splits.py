"""Split constraints on ReLU pre-activations, enforced through their bounds (branch and bound's hook).

Branch and bound splits an unstable neuron ``y = ReLU(z)``, ``l < 0 < u``, into two sub-domains of the
input box,

    active   (split = +1):  z ≥ 0,  y = z
    inactive (split = -1):  z ≤ 0,  y = 0          (split = 0: no constraint, the neuron is free)

On a sub-domain, any valid bounds ``[l, u]`` of ``z`` over the whole box stay valid, and the constraint
tightens them to

    active:   [max(l, 0), u]          inactive:   [l, min(u, 0)],

which makes the neuron's relaxation exact (``y = z`` or ``y = 0``) and tightens every later layer's
bounds computed from them (the "first sound version" of split constraints; β-CROWN adds them to the
back-substitution as Lagrange multipliers instead). If a clamped lower bound exceeds the upper bound,
no point of the box satisfies the constraints: the sub-domain is empty (:func:`is_empty`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ACTIVE, INACTIVE, FREE = 1, -1, 0


def clamp_to_split(lower: jax.Array, upper: jax.Array, split: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(max(l, 0), u)`` where ``split == +1``, ``(l, min(u, 0))`` where ``split == -1``, else ``(l, u)``;
    ``split`` has the shape of ``lower`` (or broadcasts to it)."""
    split = jnp.asarray(split)
    if split.shape != lower.shape and jnp.broadcast_shapes(split.shape, lower.shape) != lower.shape:
        raise ValueError(f"split: expected the pre-activation shape {tuple(lower.shape)}, got {tuple(split.shape)}")
    lower = jnp.where(split == ACTIVE, jnp.maximum(lower, 0.0), lower)
    upper = jnp.where(split == INACTIVE, jnp.minimum(upper, 0.0), upper)
    return lower, upper


def is_empty(lower: jax.Array, upper: jax.Array) -> jax.Array:
    """Per example (axis 0): some neuron has ``l > u``, so the constrained sub-domain has no point."""
    return jnp.any((lower > upper).reshape(lower.shape[0], -1), axis=1)
