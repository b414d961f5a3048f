"""2-D convolution whose kernel gradient is fast on every backend.

    y[b, h, w, o] = Σ_{i, j, c} x_pad[b, s·h + i, s·w + j, c] · W[i, j, c, o]

The forward pass is XLA's convolution. Its derivative is written by hand (:func:`jax.custom_jvp`):

    dy = conv(dx, W) + conv(x, dW).

The first term is XLA's convolution again, and it transposes to XLA's input gradient. On XLA:CPU the
second term's transpose, the kernel gradient, is the bottleneck. XLA lowers it as a convolution whose
contraction runs over the whole batch and image, ``dW[i, j] = Σ_{b,h,w} x_pad[b, s·h + i, s·w + j] ⊗ g[b,
h, w]``. That is one matrix product with a huge inner dimension, which XLA:CPU runs 3-4× slower than the
forward convolution, mostly on one thread.

On CPU, for large images and batches (:func:`slices_pay_on_cpu`), the second term is therefore written
as a sum over the ``k × k`` kernel offsets of shifted, strided slices of ``x`` times that offset's kernel
matrix, batched per example:

    conv(x, dW)[b] = Σ_{i, j} slice_{i,j}(x_pad)[b] @ dW[i, j].

Its transpose is ``k²`` batched matrix products ``slice_{i,j}(x_pad)[b]ᵀ @ g[b]``, summed over ``b``.
These run in parallel, which makes the CNN7 IBP train step 1.4× faster on a 2-core CPU
(``experiments/bench_bounds.py``). Other backends keep XLA's kernel gradient
(:func:`jax.lax.platform_dependent` picks the branch when the program is lowered).

Values and gradients equal XLA's to float tolerance. The function supports ``jvp``, ``grad``, ``vmap``
and ``linear_transpose`` in ``x``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis: ``⌊(size + 2·padding - kernel) / stride⌋ + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def xla_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """XLA's convolution: NHWC input, HWIO kernel, symmetric zero padding."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def shifted_slices_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The same convolution as ``Σ_{i,j} slice_{i,j}(x_pad) @ kernel[i, j]``, one batched product per offset.

    Each slice is laid out (B, C, H·W) so that the transposed product (the kernel gradient) contracts
    the last axis of both operands' memory order, the layout XLA:CPU's matrix product runs fastest."""
    kh, kw, cin, cout = kernel.shape
    batch, height, width, _ = x.shape
    out_h, out_w = output_size(height, kh, stride, padding), output_size(width, kw, stride, padding)
    x_pad = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = jnp.zeros((batch, out_h * out_w, cout), jnp.result_type(x, kernel))
    for i in range(kh):
        for j in range(kw):
            window = jax.lax.slice(
                x_pad,
                (0, i, j, 0),
                (batch, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, cin),
                (1, stride, stride, 1),
            )
            channels_first = jnp.swapaxes(window.reshape(batch, out_h * out_w, cin), 1, 2)
            per_example = jnp.broadcast_to(kernel[i, j], (batch, cin, cout))
            out = out + jnp.einsum("bcp,bco->bpo", channels_first, per_example)
    return out.reshape(batch, out_h, out_w, cout)


#: The slices pay on XLA:CPU for large per-example images and large batches only (measured on CNN3's and
#: CNN7's layers, ``experiments/RESULTS.md``): at least this many output positions per example ...
MIN_POSITIONS = 256
#: ... and at least this many (example, position) pairs in the kernel gradient's sum.
MIN_TERMS = 32768


def slices_pay_on_cpu(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: int) -> bool:
    """Whether the shifted-slices kernel gradient beats XLA's on CPU for these (static) shapes."""
    out_h = output_size(x_shape[1], kernel_shape[0], stride, padding)
    out_w = output_size(x_shape[2], kernel_shape[1], stride, padding)
    return out_h * out_w >= MIN_POSITIONS and x_shape[0] * out_h * out_w >= MIN_TERMS


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """XLA's convolution of ``x`` (N, H, W, C) with ``kernel`` (k, k, C, O); see the module doc for its
    derivative."""
    return xla_conv2d(x, kernel, stride, padding)


@conv2d.defjvp
def _conv2d_jvp(
    stride: int, padding: int, primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    x, kernel = primals
    dx, dkernel = tangents
    if slices_pay_on_cpu(x.shape, kernel.shape, stride, padding):
        kernel_term = jax.lax.platform_dependent(
            x,
            dkernel,
            cpu=lambda x_, dk: shifted_slices_conv2d(x_, dk, stride, padding),
            default=lambda x_, dk: xla_conv2d(x_, dk, stride, padding),
        )
    else:
        kernel_term = xla_conv2d(x, dkernel, stride, padding)
    return xla_conv2d(x, kernel, stride, padding), xla_conv2d(dx, kernel, stride, padding) + kernel_term
