"""Certified loss and accuracy from margin lower bounds ``lb_j ≤ z_y - z_j`` (j ≠ y).

The certified cross-entropy is the cross-entropy of the worst-case logits ``[0, -lb_j]`` with the
true class at index 0:

    L_cert = log(1 + Σ_j exp(-lb_j)) = logsumexp([0, -lb]),

an upper bound of the cross-entropy at every point of the input region. A sample is certified iff
``min_j lb_j > 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def certified_cross_entropy(margin_lb: jax.Array) -> jax.Array:
    """Per-example certified cross-entropy, shape (B,)."""
    zeros = jnp.zeros((*margin_lb.shape[:-1], 1), margin_lb.dtype)
    return jax.nn.logsumexp(jnp.concatenate([zeros, -margin_lb], axis=-1), axis=-1)


def is_certified(margin_lb: jax.Array) -> jax.Array:
    """Per-example bool: every margin lower bound is positive."""
    return jnp.all(margin_lb > 0, axis=-1)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example standard cross-entropy."""
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
