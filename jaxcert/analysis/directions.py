"""Directions and Gaussian samples in weight space, and the few pytree operations the analyses need.

Only *trainable* weights move: every direction and every noise sample is zero on BatchNorm running
statistics (see :func:`jaxcert.nets.network.trainable_mask`).

Filter normalisation (Li et al., 2018, "Visualizing the loss landscape of neural nets"): a random
Gaussian direction ``d`` is rescaled filter by filter to the norm of the corresponding filter of ``θ``,

    d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ · ‖θ_{i,j}‖,

where filter ``j`` of a Dense kernel (in, out) is column ``j`` and of a Conv kernel (H, W, I, O) is output
channel ``j``. This makes slices of differently scaled networks comparable.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxcert.nets.network import LayerParams, trainable_mask

Direction = LayerParams


def add_scaled(params: LayerParams, t: float | jax.Array, direction: Direction) -> LayerParams:
    """``θ + t · d``."""
    return jax.tree.map(lambda p, d: p + t * d, params, direction)


def tree_norm(tree: LayerParams) -> jax.Array:
    """Euclidean norm over every leaf, ``sqrt(Σ x²)``."""
    return optax.tree.norm(tree)


def tree_cosine(a: LayerParams, b: LayerParams) -> jax.Array:
    """``<a, b> / (‖a‖ ‖b‖)`` (0 when either is zero)."""
    denom = tree_norm(a) * tree_norm(b)
    return jnp.where(denom > 0, optax.tree.vdot(a, b) / jnp.where(denom > 0, denom, 1.0), 0.0)


def zero_frozen(tree: LayerParams, params: LayerParams) -> LayerParams:
    """``tree`` with the leaves of non-trainable statistics (BatchNorm mean/var) set to zero."""
    return jax.tree.map(lambda x, keep: x if keep else jnp.zeros_like(x), tree, trainable_mask(params))


@functools.partial(jax.jit, static_argnames=("n", "antithetic"))
def gaussian_samples(key: jax.Array, params: LayerParams, n: int, *, antithetic: bool = False) -> Direction:
    """``n`` samples ``z_i ~ N(0, I)`` shaped like ``params``, stacked on a new leading axis of every leaf
    (zero on non-trainable statistics). All weights are drawn by one ``jax.random.normal`` call.

    With ``antithetic=True`` (``n`` even) the second half is the negated first half, ``z_{i+n/2} = -z_i``:
    the estimate of a Gaussian mean stays unbiased and its odd-order terms cancel.
    """
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    if antithetic and n % 2:
        raise ValueError(f"antithetic sampling needs an even number of samples, got {n}")
    flat, unravel = ravel_pytree(params)
    half = n // 2 if antithetic else n
    z = jax.random.normal(key, (half, flat.shape[0]), flat.dtype)
    if antithetic:
        z = jnp.concatenate([z, -z])
    return jax.vmap(lambda v: zero_frozen(unravel(v), params))(z)


def gaussian_direction(key: jax.Array, params: LayerParams) -> Direction:
    """``z ~ N(0, I)`` shaped like ``params`` (zero on non-trainable statistics)."""
    return jax.tree.map(lambda a: a[0], gaussian_samples(key, params, 1))


def _filter_axes(p: jax.Array) -> tuple[int, ...]:
    """Axes summed over for the norm of one filter: all but the last (output) axis."""
    return tuple(range(p.ndim - 1))


@functools.partial(jax.jit, static_argnames=("ignore_biases",))
def filter_normalize(direction: Direction, params: LayerParams, *, ignore_biases: bool = True) -> Direction:
    """Rescale ``direction`` filter-wise to the norms of ``params``' filters (see module docstring).

    Kernels are normalised per output filter. One-dimensional leaves (biases, BatchNorm scale and bias)
    are set to zero with ``ignore_biases=True`` (Li et al.'s default), otherwise rescaled as a whole to the
    norm of the leaf (left as they are where that norm is zero, e.g. zero-initialised biases).
    """

    def rescale(d: jax.Array, p: jax.Array, keep: bool) -> jax.Array:
        if not keep:
            return jnp.zeros_like(d)
        if p.ndim >= 2:
            axes = _filter_axes(p)
            dn = jnp.sqrt(jnp.sum(d**2, axis=axes, keepdims=True))
            pn = jnp.sqrt(jnp.sum(p**2, axis=axes, keepdims=True))
            return d * pn / jnp.where(dn > 0, dn, 1.0)
        if ignore_biases:
            return jnp.zeros_like(d)
        dn, pn = jnp.linalg.norm(d), jnp.linalg.norm(p)
        return jnp.where((pn > 0) & (dn > 0), d * pn / jnp.where(dn > 0, dn, 1.0), d)

    return jax.tree.map(rescale, direction, params, trainable_mask(params))


@functools.partial(jax.jit, static_argnames=("normalize", "ignore_biases"))
def random_direction(
    key: jax.Array, params: LayerParams, *, normalize: bool = True, ignore_biases: bool = True
) -> Direction:
    """A Gaussian direction in weight space, filter-normalised by default (Li et al., 2018)."""
    d = gaussian_direction(key, params)
    return filter_normalize(d, params, ignore_biases=ignore_biases) if normalize else d
