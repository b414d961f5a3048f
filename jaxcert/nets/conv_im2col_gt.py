"""im2col in batch chunks whose kernel gradient is the product XLA:CPU hands to YNNPACK, ``g_cᵀ P_c``.

The convolution is :func:`jaxcert.nets.conv_im2col.scanned_im2col_conv2d`'s (``c`` examples at a time,
``P_c`` the chunk's ``K × k²C`` patches, ``K = c·H'·W'`` rows in NHWC order), written with the output
channels first:

    Wᵀ = barrier(W.reshape(k²C, O)ᵀ)                              (O, k²C), once
    y_c = barrier(Wᵀ · P_cᵀ)ᵀ                                      (O, K) → (K, O) = (c, H', W', O)

so that its transpose in ``W``, the kernel gradient, is

    ∂Wᵀ = Σ_chunks barrier(g_cᵀ) · P_c                             (O, K) · (K, k²C), accumulated in the loop
    ∂W  = barrier(∂Wᵀ)ᵀ                                            one transpose of the small result.

Both operands of that product are row-major with the contraction on the inner side of the left one and the
outer side of the right one, the form XLA:CPU runs as a YNNPACK fusion (130-150 GFLOP/s per core measured
on CNN7's chunk shapes, against 55-90 for the Eigen product with a transposed operand that
``scanned_im2col_conv2d``'s transpose ``P_cᵀ g_c`` lowers to). The :func:`jax.lax.optimization_barrier` calls
(identities; their transposes are barriers too) keep XLA's algebraic simplifier from folding the two small
transposes (``g_c``'s, ``K × O`` entries, and the result's) back into the product, which would turn it into
that Eigen product again. The barriers are linear, batch under ``vmap`` and have derivatives, so the
function keeps ``jvp``, ``grad``, ``vmap`` and ``linear_transpose`` in both arguments.

What was measured and not kept (``experiments/bench_kernel_grad.py``): forms without patches, one product per
kernel offset on a shifted window of the padded input (its four parity phases at stride 2, or a contiguous
row range of the row-padded flattened image) — XLA:CPU copies every window into a buffer of its own before
the product (a slice fusion; it never reads the window in place), so those forms copy as much as the patches
and run ``k²`` thinner products over the whole batch, 2-5× slower than the chunked patches.
"""

from __future__ import annotations

import jax

from jaxcert.nets.conv_im2col import over_batch_chunks, patches


def _chunk_conv2d(x: jax.Array, kernel_t: jax.Array, window: tuple[int, int], stride: int, padding: int) -> jax.Array:
    """``barrier(Wᵀ · P(x)ᵀ)ᵀ`` for one chunk ``x`` (c, H, W, C), ``kernel_t`` = ``Wᵀ`` (O, k²C): (c, H', W', O)."""
    cols = patches(x, window, stride, padding)
    out_shape = (*cols.shape[:3], kernel_t.shape[0])
    rows = cols.reshape(-1, cols.shape[-1])  # (K, k²C): 2-D, so the transpose's product stays 2-D
    out_t = jax.lax.dot_general(kernel_t, rows, (((1,), (1,)), ((), ())))  # (O, K)
    return jax.lax.optimization_barrier(out_t).T.reshape(out_shape)


def scanned_im2col_gt_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int, chunk: int) -> jax.Array:
    """The convolution of ``x`` (B, H, W, C) with ``kernel`` (kh, kw, C, O), ``chunk`` examples at a time
    (``lax.map``; ``chunk`` must divide the batch; ``chunk >= batch``: one step, no loop), written so that its
    kernel gradient is ``Σ_chunks g_cᵀ P_c`` (see the module doc)."""
    kh, kw, cin, cout = kernel.shape
    kernel_t = jax.lax.optimization_barrier(kernel.reshape(kh * kw * cin, cout).T)
    chunk_conv = lambda group, k_t: _chunk_conv2d(group, k_t, (kh, kw), stride, padding)
    return over_batch_chunks(chunk_conv, x, kernel_t, chunk)
