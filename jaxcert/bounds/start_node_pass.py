"""One intermediate CROWN pass with lower slopes per *start-node row* (alpha-CROWN's per-start-node slopes).

The pass that bounds the input ``z_j`` of ReLU ``j`` back-substitutes two rows per bounded neuron ``n``
(``+e_n`` for its lower bound, ``-e_n`` for its upper bound: lower and upper lines are separate rows). With
*shared* slopes every row of the pass relaxes an earlier ReLU ``i`` with the same lower slope
``β_{j,i}`` (one per example and neuron); here every row ``r`` has its own,

    α ↦ A⁺ β_{j,i}[r] + A⁻ s        at ReLU i, for row r of pass j,

so the bound of each neuron of ``z_j`` (each side) is optimised on its own, as in auto_LiRPA's alpha-CROWN
(one alpha per start node). Any slope in ``[0, 1]`` keeps every row sound, so the result is sound.

Layouts of ``β_{j,i}`` (rows as in :func:`jaxcert.bounds.crown.neuron_bounds`, ``R_j = 2 N_j``, or
``2 k`` with ``unstable_budget=k``):

    dense rows     (B, R_j, *neurons_i)                    a full map of ReLU i per row
    window rows    (B, P, Rp, K_i, K_i, C_i)                only the row's receptive field on ReLU i
                                                           (patches mode; P·Rp = R_j, see
                                                           :mod:`jaxcert.bounds.patches`)

A row's slopes matter only on its receptive field, so the window layout loses nothing and costs
``K_i² C_i`` instead of ``|neurons_i|`` numbers per row (CNN3: 256 instead of 3136). Floats per example:

    Σ_i  R_j · (|neurons_i| or K_i² C_i)                       (:func:`row_slope_elements`)

The windows back-substitution is :func:`jaxcert.bounds.patches.backsubstitute_windows`, given the per-row
slopes at each ReLU through its ``local_lines`` hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from jaxcert.bounds.backsub import backsubstitute, neuron_rows, split_two_sided
from jaxcert.bounds.crown import Interval, _window_rows, use_windows
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.patches import Window, backsubstitute_windows, gather_windows, layer_windows, window_elements
from jaxcert.bounds.relu_slopes import ReluLines
from jaxcert.bounds.row_chunks import MAX_ROWS_BYTES, map_row_chunks, rows_per_chunk
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, shapes

WHERE = "alpha-CROWN per-start-node slopes"


def _relus_below(arch: Arch, index: int) -> list[int]:
    """The activation layers below layer ``index`` (``Add`` merges are the graph drivers' business)."""
    return [i for i in range(index) if not arch[i].is_affine and not arch[i].is_merge]


def relu_windows(arch: Arch, index: int, in_shape: tuple[int, ...]) -> dict[int, Window]:
    """The window of a row of the input of layer ``index`` on each earlier ReLU (patches mode)."""
    below = arch[:index]
    windows = layer_windows(below, in_shape)  # from the last layer down
    return {i: windows[len(below) - 1 - i][1] for i in _relus_below(arch, index)}


def row_count(arch: Arch, index: int, in_shape: tuple[int, ...], neurons_per_example: int | None) -> int:
    """Rows of the pass that bounds the input of layer ``index``: two per bounded neuron."""
    n = math.prod(shapes(arch, in_shape)[index]) if neurons_per_example is None else neurons_per_example
    return 2 * n


def row_slope_elements(
    arch: Arch, index: int, in_shape: tuple[int, ...], neurons_per_example: int | None, patches: bool | str
) -> int:
    """Floats per example of the per-row slopes of the pass bounding the input of layer ``index``
    (see the module doc)."""
    rows = row_count(arch, index, in_shape, neurons_per_example)
    layer_shapes = shapes(arch, in_shape)
    if use_windows(arch[:index], in_shape, patches):
        per_row = sum(w.size**2 * layer_shapes[i][-1] for i, w in relu_windows(arch, index, in_shape).items())
    else:
        per_row = sum(math.prod(layer_shapes[i]) for i in _relus_below(arch, index))
    return rows * per_row


def initial_row_slopes(
    arch: Arch,
    index: int,
    neurons: jax.Array | None,
    slopes: Mapping[int, jax.Array],
    lower: jax.Array,
    patches: bool | str,
) -> dict[int, jax.Array]:
    """Per-row slopes of the pass bounding the input of layer ``index``, every row starting from the
    per-neuron ``slopes[i]`` (B, *neurons_i) (e.g. the min-area ones); layout as in the module doc."""
    in_shape, batch = lower.shape[1:], lower.shape[0]
    shape = shapes(arch, in_shape)[index]
    rows = row_count(arch, index, in_shape, None if neurons is None else neurons.shape[1])
    relus = _relus_below(arch, index)
    if use_windows(arch[:index], in_shape, patches):
        A, _, h, w, _ = _window_rows(neurons, shape, lower.dtype)
        windows = relu_windows(arch, index, in_shape)
        out = {}
        for i in relus:
            gathered = gather_windows(slopes[i], h, w, windows[i])  # (B, P, 1, K, K, C)
            out[i] = jnp.broadcast_to(gathered, (batch, A.shape[1], A.shape[2], *gathered.shape[3:]))
        return out
    return {i: jnp.broadcast_to(slopes[i][:, None], (batch, rows, *slopes[i].shape[1:])) for i in relus}


def _windows_with_row_slopes(
    arch: Arch,
    params: LayerParams,
    A: jax.Array,
    const: jax.Array,
    h: jax.Array,
    w: jax.Array,
    lines: Mapping[int, ReluLines],
    bounds: Mapping[int, Interval],
    row_slopes: Mapping[int, jax.Array],
    lower: jax.Array,
    upper: jax.Array,
) -> jax.Array:
    """:func:`jaxcert.bounds.patches.backsubstitute_windows` with the lower slope of every crossing neuron
    of ReLU ``i`` taken from ``row_slopes[i]`` (B, P, Rp, K, K, C), one per row and window position."""

    def local_lines(i: int, gather: Callable[[jax.Array], jax.Array]) -> ReluLines:
        local = ReluLines(*(gather(f) for f in lines[i]))
        return rule_for(arch[i], "slopes", WHERE)(local, row_slopes[i], *(gather(b) for b in bounds[i]))

    return backsubstitute_windows(arch, params, A, const, h, w, lines, lower, upper, local_lines=local_lines)


def row_slope_bounds(
    arch: Arch,
    params: LayerParams,
    index: int,
    neurons: jax.Array | None,
    lines: Mapping[int, ReluLines],
    bounds: Mapping[int, Interval],
    row_slopes: Mapping[int, jax.Array],
    lower: jax.Array,
    upper: jax.Array,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(rows, lb, ub)``: the lower bounds of the pass's rows in their own layout ((B, R_j) dense, (B, P,
    Rp) windows; one score per row) and the CROWN bounds (B, n) of the neurons ``neurons`` (flat indices
    (B, n); ``None``: all) of the input of layer ``index``, ReLU ``i`` relaxed by ``lines[i]`` with the
    lower slopes ``row_slopes[i]`` (see the module doc; ``bounds[i]`` are its pre-activation bounds)."""
    in_shape, batch, itemsize = lower.shape[1:], lower.shape[0], lower.dtype.itemsize
    shape = shapes(arch, in_shape)[index]
    relus = _relus_below(arch, index)
    slopes = [row_slopes[i] for i in relus]
    if use_windows(arch[:index], in_shape, patches):
        A, a, h, w, split = _window_rows(neurons, shape, lower.dtype)
        per_row = window_elements(arch[:index], in_shape) + sum(s[0, 0, 0].size for s in slopes)
        chunk = rows_per_chunk(A.shape[1], batch * A.shape[2] * per_row * itemsize, max_rows_bytes)

        def windows(A: jax.Array, a: jax.Array, h: jax.Array, w: jax.Array, *chunk_slopes: jax.Array) -> jax.Array:
            local = dict(zip(relus, chunk_slopes, strict=True))
            below, below_params = arch[:index], params[:index]
            return _windows_with_row_slopes(below, below_params, A, a, h, w, lines, bounds, local, lower, upper)

        rows = jnp.broadcast_to(map_row_chunks(windows, (A, a, h, w, *slopes), chunk), (batch, *A.shape[1:3]))
        return (rows, *split(rows))
    start, A, a = neuron_rows(arch, params, index, in_shape, 1, lower.dtype)
    if neurons is not None:
        picked = jnp.concatenate([neurons, neurons + math.prod(shape)], axis=1)
        A, a = A[0][picked], a[0][picked]
    widest = max(math.prod(s) for s in shapes(arch[:start], in_shape))
    per_row = batch * (widest + sum(s[0, 0].size for s in slopes)) * itemsize
    slope_rule = {i: rule_for(arch[i], "slopes", WHERE) for i in relus}

    def dense(A: jax.Array, a: jax.Array, *chunk_slopes: jax.Array) -> jax.Array:
        local = {i: slope_rule[i](lines[i], s, *bounds[i]) for i, s in zip(relus, chunk_slopes, strict=True)}
        return backsubstitute(arch[:start], params[:start], A, a, local, lower, upper)

    rows = map_row_chunks(dense, (A, a, *slopes), rows_per_chunk(A.shape[1], per_row, max_rows_bytes))
    rows = jnp.broadcast_to(rows, (batch, rows.shape[1]))
    return (rows, *split_two_sided(rows))
