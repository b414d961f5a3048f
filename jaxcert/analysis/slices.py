"""1-D and 2-D slices of a loss through weight space, raw and Gaussian-smoothed.

    line:     L(θ + t d),                 t ∈ ts
    plane:    L(θ + t d₁ + s d₂),         (t, s) ∈ ts × ss
    smoothed: L_σ(θ') = E_{z~N(0,σ²I)} L(θ' + z) ≈ (1/N) Σ_i L(θ' + σ z_i)

The Gaussian estimate uses the *same* samples ``z_i`` at every slice point and every σ (common random
numbers): the estimated slice is then a deterministic function of the point, its Monte-Carlo noise does
not add point-to-point jitter, and σ = 0 gives back the raw loss exactly. Every slice is one vmapped
call over all (σ, point, sample) triples (optionally in chunks of ``batch_size`` via ``lax.map``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.analysis.directions import Direction, add_scaled, gaussian_samples
from jaxcert.analysis.objective import LossFn
from jaxcert.nets.network import LayerParams


def map_points(fn: Callable[[jax.Array], jax.Array], xs: jax.Array, batch_size: int | None = None) -> jax.Array:
    """``[fn(x) for x in xs]`` as one ``vmap`` (``batch_size=None``) or in vmapped chunks (``lax.map``)."""
    if batch_size is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=batch_size)


def _check_1d(name: str, a: jax.Array) -> jax.Array:
    a = jnp.asarray(a)
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array of coordinates, got shape {a.shape}")
    return a


@functools.partial(jax.jit, static_argnames=("loss_fn", "batch_size"))
def loss_along_line(
    loss_fn: LossFn, params: LayerParams, direction: Direction, ts: jax.Array, batch_size: int | None = None
) -> jax.Array:
    """``[L(θ + t d) for t in ts]``, shape ``ts.shape``."""
    ts = _check_1d("ts", ts)
    return map_points(lambda t: loss_fn(add_scaled(params, t, direction)), ts, batch_size)


@functools.partial(jax.jit, static_argnames=("loss_fn", "batch_size"))
def loss_on_plane(
    loss_fn: LossFn,
    params: LayerParams,
    directions: tuple[Direction, Direction],
    ts: jax.Array,
    ss: jax.Array,
    batch_size: int | None = None,
) -> jax.Array:
    """``L(θ + t d₁ + s d₂)`` on the grid ``ts × ss``, shape (len(ts), len(ss))."""
    ts, ss = _check_1d("ts", ts), _check_1d("ss", ss)
    d1, d2 = directions
    tt, sg = jnp.meshgrid(ts, ss, indexing="ij")
    point = lambda ts_: loss_fn(add_scaled(add_scaled(params, ts_[0], d1), ts_[1], d2))
    return map_points(point, jnp.stack([tt.ravel(), sg.ravel()], -1), batch_size).reshape(tt.shape)


def _smoothed_at(
    loss_fn: LossFn,
    params: LayerParams,
    offsets: Callable[[jax.Array], LayerParams],
    n_points: int,
    sigmas: jax.Array,
    noise: Direction,
    batch_size: int | None,
) -> jax.Array:
    """``(1/N) Σ_i L(θ + offset(p) + σ z_i)`` for every σ and point index p, shape (S, P)."""
    n = jax.tree.leaves(noise)[0].shape[0]
    s_count = sigmas.shape[0]

    def one(k: jax.Array) -> jax.Array:
        s, p, i = k // (n_points * n), (k // n) % n_points, k % n
        z = jax.tree.map(lambda a: a[i], noise)
        theta = jax.tree.map(lambda q, o, zi: q + o + sigmas[s] * zi, params, offsets(p), z)
        return loss_fn(theta)

    values = map_points(one, jnp.arange(s_count * n_points * n), batch_size)
    return values.reshape(s_count, n_points, n).mean(-1)


def check_sigmas(sigmas: float | jax.Array) -> jax.Array:
    """``sigmas`` as a 1-D float array; ``ValueError`` for another shape or (when concrete) a negative σ."""
    if not isinstance(sigmas, jax.core.Tracer) and bool(np.any(np.asarray(sigmas) < 0)):
        raise ValueError(f"sigmas must be >= 0, got {sigmas}")
    sigmas = jnp.atleast_1d(jnp.asarray(sigmas, jnp.float32))
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be a scalar or a 1-D array, got shape {sigmas.shape}")
    return sigmas


@functools.partial(jax.jit, static_argnames=("loss_fn", "n_samples", "antithetic", "batch_size"))
def _smoothed_loss(loss_fn, params, key, sigmas, n_samples, antithetic, batch_size):  # type: ignore[no-untyped-def]
    noise = gaussian_samples(key, params, n_samples, antithetic=antithetic)
    zero = jax.tree.map(jnp.zeros_like, params)
    return _smoothed_at(loss_fn, params, lambda p: zero, 1, sigmas, noise, batch_size)[:, 0]


def smoothed_loss(
    loss_fn: LossFn,
    params: LayerParams,
    key: jax.Array,
    sigmas: float | jax.Array,
    n_samples: int = 32,
    antithetic: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """Monte-Carlo ``L_σ(θ)`` for every σ in ``sigmas``, shape (S,)."""
    return _smoothed_loss(loss_fn, params, key, check_sigmas(sigmas), n_samples, antithetic, batch_size)


@functools.partial(jax.jit, static_argnames=("loss_fn", "n_samples", "antithetic", "batch_size"))
def _smoothed_line(loss_fn, params, direction, ts, key, sigmas, n_samples, antithetic, batch_size):  # type: ignore[no-untyped-def]
    noise = gaussian_samples(key, params, n_samples, antithetic=antithetic)
    offset = lambda p: jax.tree.map(lambda d: ts[p] * d, direction)
    return _smoothed_at(loss_fn, params, offset, ts.shape[0], sigmas, noise, batch_size)


def smoothed_loss_along_line(
    loss_fn: LossFn,
    params: LayerParams,
    direction: Direction,
    ts: jax.Array,
    key: jax.Array,
    sigmas: float | jax.Array,
    n_samples: int = 32,
    antithetic: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """``L_σ(θ + t d)`` for every σ and t, shape (len(sigmas), len(ts)); common random numbers."""
    ts, sigmas = _check_1d("ts", ts), check_sigmas(sigmas)
    return _smoothed_line(loss_fn, params, direction, ts, key, sigmas, n_samples, antithetic, batch_size)


@functools.partial(jax.jit, static_argnames=("loss_fn", "n_samples", "antithetic", "batch_size"))
def _smoothed_plane(loss_fn, params, directions, ts, ss, key, sigmas, n_samples, antithetic, batch_size):  # type: ignore[no-untyped-def]
    d1, d2 = directions
    noise = gaussian_samples(key, params, n_samples, antithetic=antithetic)
    m = ss.shape[0]
    offset = lambda p: jax.tree.map(lambda a, b: ts[p // m] * a + ss[p % m] * b, d1, d2)
    values = _smoothed_at(loss_fn, params, offset, ts.shape[0] * m, sigmas, noise, batch_size)
    return values.reshape(sigmas.shape[0], ts.shape[0], m)


def smoothed_loss_on_plane(
    loss_fn: LossFn,
    params: LayerParams,
    directions: tuple[Direction, Direction],
    ts: jax.Array,
    ss: jax.Array,
    key: jax.Array,
    sigmas: float | jax.Array,
    n_samples: int = 32,
    antithetic: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """``L_σ(θ + t d₁ + s d₂)`` on ``ts × ss`` for every σ, shape (len(sigmas), len(ts), len(ss))."""
    ts, ss, sigmas = _check_1d("ts", ts), _check_1d("ss", ss), check_sigmas(sigmas)
    return _smoothed_plane(loss_fn, params, directions, ts, ss, key, sigmas, n_samples, antithetic, batch_size)
