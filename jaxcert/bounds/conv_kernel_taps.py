"""The kernel gradient of a convolution over many rows, as one matrix product per kernel tap.

For ``y = conv(x, W)`` (NHWC, HWIO, stride ``s``, symmetric padding ``p``) and a cotangent ``a`` on ``y``,

    ∂W[i, j] = Σ_{n, h, w} x_pad[n, s·h + i, s·w + j, :]ᵀ a[n, h, w, :]        (C_in × C_out per tap),

i.e. for each of the ``k²`` taps one product ``X_ijᵀ A`` of the tap's strided slice ``X_ij`` (N·H'·W', C_in)
with ``A`` (N·H'·W', C_out), contracted over every (row, position) pair in the operands' memory order.

Back-substitution's transposed convolutions (:mod:`jaxcert.bounds.conv_transpose`) need this kernel
gradient with ``x`` = the cotangent of the rows (CNN3's CROWN-IBP margin rows: 1 152 rows of 14×14×16).
XLA:CPU's own kernel gradient wants that operand laid out with the rows innermost, (C, H, W, N), and
fuses the producers of the cotangent (the ReLU rule's selects and products) into that transposed copy,
which reads its inputs with a stride of a whole row per element: 27 % of CNN3's CROWN-IBP training
step under XLA (RESULTS.md, issue 19, fourth session). The slices here read ``x`` in its own order.
Same values as XLA's kernel gradient to float tolerance. Used on CPU for ≥ :data:`MIN_CHANNELS` input
channels (measured: with one input channel, CNN3's first layer, XLA's is faster).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Input channels from which the taps pay on XLA:CPU (CNN3's 16-channel second layer: the whole CROWN-IBP
#: train step 0.75-0.8× the CPU time; its 1-channel first layer: XLA's kernel gradient faster).
MIN_CHANNELS = 8


def taps_pay_on_cpu(in_channels: int) -> bool:
    """Whether :func:`kernel_gradient_by_taps` is chosen on CPU for a convolution of ``in_channels`` inputs."""
    return in_channels >= MIN_CHANNELS


def kernel_gradient_by_taps(
    x: jax.Array, a: jax.Array, kernel_shape: tuple[int, int, int, int], stride: int, padding: int
) -> jax.Array:
    """``∂W`` (kh, kw, C_in, C_out) of ``⟨a, conv(x, W)⟩`` for ``x`` (N, H, W, C_in), ``a`` (N, H', W', C_out)."""
    kh, kw, cin, cout = kernel_shape
    n, out_h, out_w, _ = a.shape
    x_pad = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    a_flat = a.reshape(-1, cout)
    taps = []
    for i in range(kh):
        for j in range(kw):
            end = (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, cin)
            tap = jax.lax.slice(x_pad, (0, i, j, 0), end, (1, stride, stride, 1)).reshape(-1, cin)
            taps.append(jax.lax.dot_general(tap, a_flat, (((0,), (0,)), ((), ()))))
    return jnp.stack(taps).reshape(kernel_shape)
