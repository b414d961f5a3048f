"""BatchNorm population statistics, recomputed over the training set at the end of training.

The literature's recipe (Shi et al. 2021, SABR, TAPS, the expressive losses) trains with the batch's
statistics and tests with the *population* statistics: the mean and variance of each BatchNorm layer's
input over the whole training set, the net run in training mode on all of it as one batch. With
``h_k(x)`` the input of the ``k``-th BatchNorm layer, every earlier BatchNorm layer already normalising
with its population statistics, and the mean over the ``N`` examples and every position but the channel
(last) axis (``M = N · positions`` values per channel):

    μ_k = (1/M) Σ h_k,        σ²_k = (1/M) Σ (h_k - μ_k)²,

the biased variance that :class:`jaxcert.nets.layers.BatchNorm` normalises a batch with in training mode
(:func:`jaxcert.train.batch_norm.batch_stats`). The layers are taken in order, since ``h_k`` depends on the
statistics before it; the examples in chunks of ``chunk``, the per-chunk ``(count, mean, M2)`` merged in
float64 by Chan et al.'s pairwise update, so the result is the exact population value up to the float32
forward pass. Afterwards each BatchNorm layer's running ``mean``/``var`` hold ``(μ_k, σ²_k)``: the eval-mode
network that is certified and saved is the one whose statistics are the training set's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.nets.layers import Arch, BatchNorm
from jaxcert.nets.network import LayerParams, forward

#: Examples per forward pass while accumulating the statistics.
DEFAULT_CHUNK = 1024


@functools.partial(jax.jit, static_argnums=0)
def _chunk_moments(prefix: Arch, params: LayerParams, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per channel ``(mean, M2 = Σ (h - mean)²)`` of ``h = forward(prefix, params, x)`` over all but the last axis."""
    h = forward(prefix, params, x)
    axes = tuple(range(h.ndim - 1))
    mean = jnp.mean(h, axis=axes)
    return mean, jnp.sum((h - mean) ** 2, axis=axes)


def merge_moments(
    a: tuple[int, np.ndarray, np.ndarray], b: tuple[int, np.ndarray, np.ndarray]
) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s update of ``(n, mean, M2)``: ``δ = mean_b - mean_a``, ``n = n_a + n_b``,
    ``mean = mean_a + δ n_b / n``, ``M2 = M2_a + M2_b + δ² n_a n_b / n``."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), sa + sb + delta**2 * (na * nb / n)


def input_moments(
    prefix: Arch, params: LayerParams, x: np.ndarray, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """``(μ, σ²)`` per channel of ``forward(prefix, params, ·)`` over all of ``x`` (float64, biased variance)."""
    if len(x) == 0:
        raise ValueError("BatchNorm population statistics need at least one training example")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    total = None
    for start in range(0, len(x), chunk):
        part = jnp.asarray(x[start : start + chunk])
        mean, m2 = (np.asarray(v, np.float64) for v in _chunk_moments(prefix, params, part))
        positions = int(np.prod(jax.eval_shape(lambda z: forward(prefix, params, z), part).shape[:-1]))
        moments = (positions, mean, m2)
        total = moments if total is None else merge_moments(total, moments)
    n, mean, m2 = total
    return mean, m2 / n


def population_stats(arch: Arch, params: LayerParams, x: np.ndarray, *, chunk: int = DEFAULT_CHUNK) -> LayerParams:
    """``params`` with every BatchNorm layer's ``mean``/``var`` set to the population statistics of its input
    over ``x`` (module doc), each layer after the ones before it; ``params`` itself without BatchNorm. Pure:
    the input is not modified."""
    params = [dict(p) for p in params]
    for k, spec in enumerate(arch):
        if isinstance(spec, BatchNorm):
            mean, var = input_moments(arch[:k], params[:k], x, chunk)
            dtype = params[k]["mean"].dtype
            params[k] = {**params[k], "mean": jnp.asarray(mean, dtype), "var": jnp.asarray(var, dtype)}
    return params
