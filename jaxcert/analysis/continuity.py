"""Continuity of the certified loss along a 1-D sweep ``t ↦ L(θ + t d)`` of a weight direction.

On a grid ``t_0 < … < t_{n-1}`` with values ``L_k`` the neighbour steps are ``Δ_k = |L_{k+1} - L_k|``.
The largest jump is

    k* = argmax_k Δ_k,    relative jump = Δ_{k*} / median_k Δ_k.

For a Lipschitz loss every step is O(h) on a grid of spacing ``h``, so the relative jump stays bounded
(it is at most the ratio of the largest to the typical slope) and does not grow when the grid is refined.
A discontinuity of height J gives Δ_{k*} ≈ J, so the relative jump grows like 1/h. IBP and DeepZ losses
are continuous in θ; CROWN with the min-area lower slope jumps where a crossing neuron passes u = -l,
hBox where one passes l = 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcert.analysis.directions import Direction
from jaxcert.analysis.objective import LossFn
from jaxcert.analysis.slices import loss_along_line
from jaxcert.nets.network import LayerParams

#: Floor of the median step, so that a flat sweep with one jump reports a huge (not a NaN) ratio.
TINY = 1e-12


class Jump(NamedTuple):
    """The largest neighbour step of a sweep: it lies between ``ts[index]`` and ``ts[index + 1]``."""

    index: jax.Array
    t: jax.Array  # midpoint of the two grid points
    size: jax.Array  # |L_{k*+1} - L_{k*}|
    relative: jax.Array  # size / max(median step, TINY)


def neighbour_steps(values: jax.Array) -> jax.Array:
    """``|L_{k+1} - L_k|`` along the last axis."""
    return jnp.abs(jnp.diff(values, axis=-1))


def largest_jump(ts: jax.Array, values: jax.Array) -> Jump:
    """The largest neighbour step of ``values`` sampled at the increasing grid ``ts`` (1-D, ≥ 3 points)."""
    ts, values = jnp.asarray(ts), jnp.asarray(values)
    if ts.ndim != 1 or ts.shape != values.shape or ts.shape[0] < 3:
        raise ValueError(f"ts and values must be 1-D of the same length >= 3, got {ts.shape} and {values.shape}")
    steps = neighbour_steps(values)
    k = jnp.argmax(steps)
    size = steps[k]
    return Jump(k, (ts[k] + ts[k + 1]) / 2, size, size / jnp.maximum(jnp.median(steps), TINY))


def sweep(
    loss_fn: LossFn, params: LayerParams, direction: Direction, ts: jax.Array, batch_size: int | None = None
) -> tuple[jax.Array, Jump]:
    """``(L(θ + t d) for t in ts, largest jump)``; the losses come from one vmapped call."""
    values = loss_along_line(loss_fn, params, direction, jnp.asarray(ts), batch_size)
    return values, largest_jump(ts, values)
