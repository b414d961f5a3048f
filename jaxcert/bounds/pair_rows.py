"""CROWN rows for the unstable (example, neuron) pairs of a layer only, in chunks that run only when needed.

An intermediate pass of CROWN bounds the pre-activation ``z`` of one ReLU layer (N neurons per example).
A neuron whose forward interval is stable keeps that interval whatever its rows would give
(:mod:`jaxcert.bounds.neuron_rows`), so only the unstable pairs need their two rows ``[e_n; -e_n]``.
Their number ``T`` changes with the data, while a jitted program needs static shapes. Here:

    pairs    the flat indices ``b·N + n`` of the unstable pairs of the whole batch, in order, then padding
             (``jnp.nonzero`` with the static size ``B·N``), and their count ``T``;
    chunks   chunk ``j`` holds the pairs ``[j·c, (j+1)·c)``; it is back-substituted under
             ``lax.cond(j·c < T)`` and skipped otherwise, so a pass costs ``⌈T / c⌉ · c`` pairs instead
             of ``B · N`` neurons, and no pair is ever dropped, however many are unstable;
    scatter  each pair's ``(l, u)`` goes back to its place (padding dropped).

The bounds are therefore those of the whole-layer pass, to float tolerance (the same rows, summed in
another order). Under ``jax.vmap`` (GLS members) ``T`` is batched and ``lax.cond`` becomes a select:
every chunk runs (about the whole-layer cost, still exact).

A pair's rows, from the rows of every neuron carried through the affine layers directly below the
layer once, at batch one (they do not depend on the example):

    windows  the rows ``[e_c; -e_c]`` of each grid position as 1×1 windows, carried to windows of the
             last activation's output (:func:`jaxcert.bounds.patches.carry_windows`); a pair takes the
             two rows of its position ``n // C`` and channel ``n % C`` and goes on with its example's
             relaxations and box (``examples=``), its two rows sharing their window gathers;
    dense    the rows of :func:`jaxcert.bounds.backsub.neuron_rows`; the pairs are the batch of
             :func:`jaxcert.bounds.backsub.backsubstitute`, with their examples' relaxations and box.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds.backsub import backsubstitute, neuron_rows
from jaxcert.bounds.patches import carry_windows, concretize_windows, window_elements
from jaxcert.bounds.relu_slopes import ReluLines, crossing_mask
from jaxcert.bounds.row_chunks import rows_per_chunk
from jaxcert.nets.graph import plan_for
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams

#: Without ``unstable_chunk`` a layer's pairs are split into this many chunks: a chunk skipped costs
#: nothing, so the pass costs the unstable pairs rounded up to ``B · N / CHUNKS_PER_LAYER``.
CHUNKS_PER_LAYER = 16

PairBounds = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def check_unstable_rows(unstable_rows: Any, unstable_chunk: Any) -> None:
    """``ValueError`` unless ``unstable_rows`` is True, False or "auto" and ``unstable_chunk`` None or an int ≥ 1."""
    if not any(unstable_rows is v for v in (True, False)) and unstable_rows != "auto":
        raise ValueError(f"unstable_rows must be True, False or 'auto', got {unstable_rows!r}")
    bad = isinstance(unstable_chunk, bool) or not isinstance(unstable_chunk, int) or unstable_chunk < 1
    if unstable_chunk is not None and bad:
        raise ValueError(f"unstable_chunk must be None (automatic) or a positive int (pairs), got {unstable_chunk!r}")


def unstable_pairs(lower: jax.Array, upper: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(pairs, T)``: the flat indices ``b·N + n`` (B·N,) of the crossing neurons ``l < 0 < u`` of
    ``lower``/``upper`` (B, *shape) in order, padded with ``B·N``, and their number ``T``."""
    mask = crossing_mask(lower, upper).reshape(-1)
    (pairs,) = jnp.nonzero(mask, size=mask.size, fill_value=mask.size)
    return pairs, jnp.sum(mask)


def map_needed_chunks(fn: PairBounds, count: jax.Array, pairs: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """``fn`` of ``pairs`` (M,) ``chunk`` at a time (``lax.map``), a chunk whose first pair is at or past
    ``count`` skipped (``lax.cond``; zeros there). Returns ``fn``'s outputs for every pair, each (M,).

    Each chunk is recomputed in the backward pass (``jax.checkpoint``) instead of storing its residuals:
    a cond's residuals are zero-filled where it skipped, so the gradient would otherwise write the
    residuals of every chunk (IBP-trained CNN3, batch 128, under load: 8.0 s and 2.7 GiB estimated per
    gradient step without it, 2.5 s with it)."""
    total = pairs.shape[0]
    n = -(-total // chunk)
    padded = jnp.pad(pairs, (0, n * chunk - total), constant_values=total).reshape(n, chunk)
    out_shape = jax.eval_shape(fn, padded[0])
    zeros = lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
    run = lambda j, chunk_pairs: jax.lax.cond(j * chunk < count, jax.checkpoint(fn), zeros, chunk_pairs)
    out = run(0, padded[0]) if n == 1 else jax.lax.map(lambda args: run(*args), (jnp.arange(n), padded))
    return jax.tree.map(lambda o: o.reshape(n * chunk)[:total], out)


def scatter_pairs(bound: jax.Array, pairs: jax.Array, values: jax.Array) -> jax.Array:
    """``bound`` (B, *shape) with the pairs ``pairs`` (flat indices, padding ``B·N`` dropped) set to ``values``."""
    flat = bound.reshape(-1).at[pairs].set(values, mode="drop")
    return flat.reshape(bound.shape)


def _affine_start(arch: Arch, index: int) -> int:
    """The first layer of the run of affine layers directly below layer ``index`` (down to the last
    activation, merge or the input)."""
    start = index
    while start > 0 and arch[start - 1].is_affine and not arch[start - 1].is_merge:
        start -= 1
    return start


def _window_pair_fn(
    arch: Arch, params: LayerParams, index: int, lines: Mapping[int, ReluLines], lower: jax.Array, upper: jax.Array
) -> PairBounds:
    layer_shapes = plan_for(arch, lower.shape[1:]).shapes
    height, width, channels = layer_shapes[index]
    start = _affine_start(arch, index)
    eye = jnp.eye(channels, dtype=lower.dtype)
    A = jnp.broadcast_to(
        jnp.concatenate([eye, -eye])[None, None, :, None, None, :], (1, height * width, 2 * channels, 1, 1, channels)
    )
    pos = jnp.arange(height * width)[None]
    A, const, window = carry_windows(
        arch[start:index], params[start:index], A, jnp.zeros(A.shape[:3], A.dtype), pos // width, pos % width, {},
        layer_shapes[start],
    )  # fmt: skip
    neurons = height * width * channels

    def bounds(pairs: jax.Array) -> tuple[jax.Array, jax.Array]:
        safe = jnp.minimum(pairs, lower.shape[0] * neurons - 1)
        example, neuron = safe // neurons, safe % neurons
        p, c = neuron // channels, neuron % channels
        rows = jnp.stack([c, c + channels], axis=1)  # the pair's lower and upper row
        A_p, const_p = A[0, p[:, None], rows][None], const[0, p[:, None], rows][None]  # (1, n, 2, K, K, C)
        h, w, ex = (p // width)[None], (p % width)[None], example[None]
        A_p, const_p, win = carry_windows(
            arch[:start], params[:start], A_p, const_p, h, w, lines, lower.shape[1:], window, examples=ex
        )  # fmt: skip
        out = concretize_windows(A_p, const_p, h, w, win, lower, upper, examples=ex)[0]
        return out[:, 0], -out[:, 1]

    return bounds


def _dense_pair_fn(
    arch: Arch, params: LayerParams, index: int, lines: Mapping[int, ReluLines], lower: jax.Array, upper: jax.Array
) -> PairBounds:
    plan = plan_for(arch, lower.shape[1:])
    start, A, const = neuron_rows(arch, params, index, lower.shape[1:], 1, lower.dtype)
    neurons, batch = math.prod(plan.shapes[index]), lower.shape[0]
    full = {
        i: ReluLines(*(jnp.broadcast_to(f, (batch, *plan.shapes[i])) for f in lines[i])) for i in lines if i < start
    }

    def bounds(pairs: jax.Array) -> tuple[jax.Array, jax.Array]:
        safe = jnp.minimum(pairs, batch * neurons - 1)
        example, neuron = safe // neurons, safe % neurons
        rows = jnp.stack([neuron, neuron + neurons], axis=1)
        take = lambda t: jnp.take(t, example, axis=0)
        pair_lines = {i: ReluLines(*map(take, f)) for i, f in full.items()}
        out = backsubstitute(
            arch[:start], params[:start], A[0][rows], const[0][rows], pair_lines, take(lower), take(upper)
        )
        return out[:, 0], -out[:, 1]

    return bounds


def pair_bytes(arch: Arch, index: int, in_shape: tuple[int, ...], windows: bool, itemsize: int) -> int:
    """Bytes of one pair's two rows at their widest (dense: plus its example's box and relaxations)."""
    if windows:
        return 2 * window_elements(arch[:index], in_shape) * itemsize
    layer_shapes = plan_for(arch, in_shape).shapes[: index + 1]
    return (2 * max(map(math.prod, layer_shapes)) + 3 * sum(map(math.prod, layer_shapes))) * itemsize


def unstable_pair_bounds(
    arch: Arch,
    params: LayerParams,
    index: int,
    lines: Mapping[int, ReluLines],
    lower: jax.Array,
    upper: jax.Array,
    interval: tuple[jax.Array, jax.Array],
    *,
    windows: bool,
    unstable_chunk: int | None,
    max_rows_bytes: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CROWN bounds of the unstable pairs of the input of layer ``index`` (the module doc): every unstable
    pair of the forward ``interval`` (B, *shape) back-substituted, ``unstable_chunk`` pairs at a time
    (None: B·N / :data:`CHUNKS_PER_LAYER`; at most ``max_rows_bytes`` of rows per chunk). Returns
    ``(pairs, l, u)``, each (B·N,): the pairs as :func:`unstable_pairs` lists them and their bounds (zero
    or meaningless past the unstable ones: :func:`scatter_pairs` drops the padding)."""
    lo, hi = interval
    pairs, count = unstable_pairs(lo, hi)
    make = _window_pair_fn if windows else _dense_pair_fn
    fn = make(arch, params, index, lines, lower, upper)
    total = pairs.shape[0]
    chunk = unstable_chunk if unstable_chunk is not None else -(-total // CHUNKS_PER_LAYER)
    per_pair = pair_bytes(arch, index, lower.shape[1:], windows, lower.dtype.itemsize)
    chunk = min(chunk, rows_per_chunk(total, per_pair, max_rows_bytes))
    z_lo, z_hi = map_needed_chunks(fn, count, pairs, chunk)
    return pairs, z_lo, z_hi
