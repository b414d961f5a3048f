"""Sensitivity of a loss to its weights.

    perturbation sensitivity:  S_σ(θ) = (1/N) Σ_i |L(θ + σ z_i) - L(θ)|,   z_i ~ N(0, I)
    gradient norm:             ‖∇_θ L(θ)‖₂

For a loss that is Lipschitz near θ, ``S_σ → 0`` linearly as σ → 0 (``S_σ ≈ σ · E|<∇L, z>|``); at a
discontinuity of height J it tends to a positive constant (≈ J/2 for a jump across a hyperplane through
θ), however small σ. The samples are vmapped (one call).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcert.analysis.directions import gaussian_samples, tree_norm, zero_frozen
from jaxcert.analysis.objective import LossFn
from jaxcert.analysis.slices import check_sigmas, map_points
from jaxcert.nets.network import LayerParams


@functools.partial(jax.jit, static_argnames=("loss_fn", "n_samples", "batch_size"))
def _sensitivity(loss_fn, params, key, sigmas, n_samples, batch_size):  # type: ignore[no-untyped-def]
    base = loss_fn(params)
    noise = gaussian_samples(key, params, n_samples)

    def one(k: jax.Array) -> jax.Array:
        s, i = k // n_samples, k % n_samples
        theta = jax.tree.map(lambda p, z: p + sigmas[s] * z[i], params, noise)
        return loss_fn(theta)

    values = map_points(one, jnp.arange(sigmas.shape[0] * n_samples), batch_size).reshape(-1, n_samples)
    return jnp.mean(jnp.abs(values - base), axis=-1)


def perturbation_sensitivity(
    loss_fn: LossFn,
    params: LayerParams,
    key: jax.Array,
    sigmas: float | jax.Array,
    n_samples: int = 32,
    batch_size: int | None = None,
) -> jax.Array:
    """``S_σ(θ)`` (see module docstring) for every σ in ``sigmas``, shape (S,); the same ``z_i`` for all σ."""
    return _sensitivity(loss_fn, params, key, check_sigmas(sigmas), n_samples, batch_size)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def gradient_norm(loss_fn: LossFn, params: LayerParams) -> jax.Array:
    """``‖∇_θ L(θ)‖₂`` over the trainable weights."""
    return tree_norm(zero_frozen(jax.grad(loss_fn)(params), params))
