"""im2col in batch chunks with the patches laid out channels first, for layers whose patch width ``k²C`` is tiny.

The input is padded and transposed once, ``x_pad`` (B, Hp, Wp, C) → (B/c, C, c, Hp, Wp) blocks. A step stacks
the ``k²`` strided windows of its block into the transposed patches

    P_cᵀ[(i, j, ch), (b, h, w)] = x_pad[b, s·h + i, s·w + j, ch]            (k²C, K),  K = c·H'·W'

and computes ``y_c = (P_cᵀ)ᵀ · W.reshape(k²C, O)`` (K, O) = (c, H', W', O). Its transpose in ``W``, the kernel
gradient, accumulates

    ∂W = Σ_chunks P_cᵀ · g_c                                            (k²C, K) · (K, O)

in the loop's carry: both operands row-major, the contraction on the inner side of the left one and the outer
side of the right one, the form XLA:CPU runs as a YNNPACK product. It is the same sum as
:mod:`jaxcert.nets.conv_im2col_gt`'s ``g_cᵀ P_c``; the two differ in the patches' layout. With ``k²C`` of 9-36
(1- to 4-channel first layers) gt-scan's NHWC patches are a ``K × k²C`` operand whose rows hold a few floats
each; here they are ``k²C`` long contiguous rows of ``K`` floats, and the product streams them (CNN7's 28×28
1→64 kernel gradient at batch 128: 3.4 CPU ms against gt-scan's 11.6 and XLA's 9.1, ``experiments/RESULTS.md``).
With many channels the whole-input transpose costs more than it saves (8 channels, ``k²C`` = 72: 10.5 against
gt-scan's 9.9), which is why :mod:`jaxcert.nets.conv_backends` takes this form for thin layers only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.nets.conv_im2col import check_batch_chunk


def _chunk_conv2d(block: jax.Array, flat_kernel: jax.Array, window: tuple[int, int], stride: int) -> jax.Array:
    """``(P_cᵀ)ᵀ · W`` for one block (C, c, Hp, Wp) of the padded, channels-first input: (c, H', W', O)."""
    (kh, kw), (channels, chunk, height, width) = window, block.shape
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    windows = [
        jax.lax.slice(
            block,
            (0, 0, i, j),
            (channels, chunk, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1),
            (1, 1, stride, stride),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    cols_t = jnp.stack(windows).reshape(kh * kw * channels, chunk * out_h * out_w)  # rows ordered (i, j, ch)
    out = jax.lax.dot_general(cols_t, flat_kernel, (((0,), (0,)), ((), ())))  # (K, O)
    return out.reshape(chunk, out_h, out_w, flat_kernel.shape[1])


def scanned_im2col_cf_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int, chunk: int) -> jax.Array:
    """The convolution of ``x`` (B, H, W, C) with ``kernel`` (kh, kw, C, O), ``chunk`` examples at a time
    (``lax.map`` over checkpointed steps; ``chunk`` must divide the batch; ``chunk >= batch``: one step, no
    loop), its patches channels first (see the module doc)."""
    kh, kw, cin, cout = kernel.shape
    batch = x.shape[0]
    chunk = check_batch_chunk(batch, chunk)
    x_pad = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    blocks = x_pad.reshape(batch // chunk, chunk, *x_pad.shape[1:]).transpose(0, 4, 1, 2, 3)
    flat_kernel = kernel.reshape(kh * kw * cin, cout)
    step = lambda block, k: _chunk_conv2d(block, k, (kh, kw), stride)
    if chunk == batch:
        return step(blocks[0], flat_kernel)
    remat = jax.checkpoint(step)
    out = jax.lax.map(lambda block: remat(block, flat_kernel), blocks)
    return out.reshape(batch, *out.shape[2:])
