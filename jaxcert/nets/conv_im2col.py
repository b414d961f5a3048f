"""A 2-D convolution as explicit patches (im2col) and one matrix product.

    P[b, h, w, (i, j, c)] = x_pad[b, s·h + i, s·w + j, c]                 (the k × k windows, k² slices)
    y[b, h, w, o]         = Σ_{(i, j, c)} P[b, h, w, (i, j, c)] · W[i, j, c, o]   (one dot_general)

It equals ``jax.lax.conv_general_dilated`` (NHWC input, HWIO kernel, symmetric zero padding) to float
tolerance and is differentiable everywhere. Its value is linear in ``W`` given ``x``, and the transpose
of that map, the kernel gradient, is one matrix product over every (example, position) pair:

    ∂W[(i, j, c), o] = Σ_{b, h, w} P[b, h, w, (i, j, c)] · g[b, h, w, o].

JAX's transpose of the product computes it with the output channels first, ``(gᵀ P)ᵀ`` (an
``(O, B·H·W) @ (B·H·W, k²C)`` product, then a transpose of the small result). ``P`` holds ``k²`` copies
of the input, so this is for small kernels; :mod:`jaxcert.nets.conv_backends` decides where it is used.

:func:`scanned_im2col_conv2d` computes the same convolution ``chunk`` examples at a time (``lax.map``
over the batch), so the patches of one step stay cache-sized. Its transpose in ``W`` is a loop that
accumulates the kernel gradient chunk by chunk in the loop's carry,

    ∂W = Σ_chunks P_chunkᵀ g_chunk,

rebuilding each chunk's patches there (``jax.checkpoint``), so the whole batch's patches are never held.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def patches(x: jax.Array, window: tuple[int, int], stride: int, padding: int) -> jax.Array:
    """The ``kh × kw`` windows of ``x`` (B, H, W, C) as (B, H', W', kh·kw·C), ordered ``(i, j, c)`` like the
    first three axes of a flattened HWIO kernel."""
    (kh, kw), (batch, height, width, channels) = window, x.shape
    out_h = (height + 2 * padding - kh) // stride + 1  # convolution.output_size (not imported: a cycle)
    out_w = (width + 2 * padding - kw) // stride + 1
    x_pad = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    windows = [
        jax.lax.slice(
            x_pad,
            (0, i, j, 0),
            (batch, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, channels),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(windows, axis=-1)


def im2col_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """``y = P(x) @ W.reshape(kh·kw·C, O)``: the convolution of ``x`` (B, H, W, C) with ``kernel`` (kh, kw, C, O)."""
    kh, kw, cin, cout = kernel.shape
    cols = patches(x, (kh, kw), stride, padding)
    return jax.lax.dot_general(cols, kernel.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())))


def scanned_im2col_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int, chunk: int) -> jax.Array:
    """:func:`im2col_conv2d` over ``chunk`` examples at a time (``lax.map``; ``chunk`` must divide the batch,
    ``chunk >= batch``: one step, no loop)."""
    return over_batch_chunks(lambda group, k: im2col_conv2d(group, k, stride, padding), x, kernel, chunk)


def over_batch_chunks(
    conv: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, kernel: jax.Array, chunk: int
) -> jax.Array:
    """``conv(x, kernel)`` computed ``chunk`` examples of ``x`` at a time by ``lax.map`` (``chunk`` must divide
    the batch; ``chunk >= batch``: one call, no loop), each step rematerialised (``jax.checkpoint``) so that the
    transpose rebuilds each chunk's patches instead of saving all of them."""
    batch = x.shape[0]
    chunk = check_batch_chunk(batch, chunk)
    if chunk == batch:
        return conv(x, kernel)
    groups = x.reshape(batch // chunk, chunk, *x.shape[1:])
    step = jax.checkpoint(conv)
    out = jax.lax.map(lambda group: step(group, kernel), groups)
    return out.reshape(batch, *out.shape[2:])


def check_batch_chunk(batch: int, chunk: int) -> int:
    """``chunk`` examples per step of a batch of ``batch``: ``min(chunk, batch)``; a smaller chunk must be >= 1
    and divide the batch (a one-line ``ValueError`` otherwise)."""
    if chunk >= batch:
        return batch
    if chunk < 1 or batch % chunk:
        raise ValueError(f"the im2col batch chunk ({chunk}) must be >= 1 and divide the batch ({batch})")
    return chunk
