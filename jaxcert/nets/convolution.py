"""2-D convolution whose kernel gradient is fast on every backend.

    y[b, h, w, o] = Σ_{i, j, c} x_pad[b, s·h + i, s·w + j, c] · W[i, j, c, o]

The forward pass is XLA's convolution. Its derivative is written by hand (:func:`jax.custom_jvp`):

    dy = conv(dx, W) + conv(x, dW).

The first term's transpose is the input gradient. On CPU it is computed from the kernel with its
channels swapped in memory (:mod:`jaxcert.nets.conv_swapped`), so that XLA:CPU runs it on its vectorised
path inside ``while`` loops too (PGD's steps, alpha-CROWN's slope ascent, ``lax.map`` over members: XLA's own
is 5-9× the CPU time there), and at stride 2 as four stride-1 convolutions on the input's parity phases
(:mod:`jaxcert.nets.conv_input_phases`, chosen by :func:`jaxcert.nets.conv_backends.input_term_choice`:
XLA:CPU runs its own as a convolution of the dilated output gradient on Eigen, 1.1-1.4× slower). On XLA:CPU the
second term's transpose, the kernel gradient, is the bottleneck. XLA lowers it as a convolution whose
contraction runs over the whole batch and image, ``dW[i, j] = Σ_{b,h,w} x_pad[b, s·h + i, s·w + j] ⊗ g[b,
h, w]``. That is one matrix product with a huge inner dimension, which XLA:CPU runs 3-4× slower than the
forward convolution, mostly on one thread.

Which implementation computes that term is chosen per platform and per static shape by
:mod:`jaxcert.nets.conv_backends` (GPU/TPU: XLA's own; CPU: measured rules), at lowering time through
:func:`jax.lax.platform_dependent`. The CPU alternatives are

- ``"im2col"`` (:mod:`jaxcert.nets.conv_im2col`): ``conv(x, dW) = P(x) @ dW``, whose transpose is one
  matrix product ``(gᵀ P)ᵀ`` over every (example, position) pair, run in parallel by XLA:CPU's dot;
- ``"im2col-scan"``: the same, ``c`` examples at a time in a loop
  (:func:`jaxcert.nets.conv_im2col.scanned_im2col_conv2d`, ``c`` from
  :func:`jaxcert.nets.conv_backends.im2col_batch_chunk`), whose transpose accumulates
  ``∂W = Σ_chunks P_cᵀ g_c`` with cache-sized patches;
- ``"im2col-scan-gt"`` (:mod:`jaxcert.nets.conv_im2col_gt`, the CPU rule's choice): the same chunks with
  the product written output channels first, ``∂Wᵀ = Σ_chunks g_cᵀ P_c``, the form XLA:CPU hands to
  YNNPACK (1.3-1.7× less CPU than ``"im2col-scan"`` on CNN7's layers);
- ``"im2col-scan-cf"`` (:mod:`jaxcert.nets.conv_im2col_cf`, the CPU rule's choice for thin first layers,
  ``kh·kw·C ≤ 48``): chunks of patches laid out channels first, ``∂W = Σ_chunks P_cᵀ g_c`` with ``P_cᵀ``
  (k²C, K), also a YNNPACK product (CNN7's 1→64 layer: 2.7× less CPU than XLA's, 3.4× less than gt);
- ``"slices"``: a sum over the ``k × k`` kernel offsets of shifted, strided slices of ``x`` times that
  offset's kernel matrix, batched per example,

      conv(x, dW)[b] = Σ_{i, j} slice_{i,j}(x_pad)[b] @ dW[i, j],

  whose transpose is ``k²`` batched matrix products ``slice_{i,j}(x_pad)[b]ᵀ @ g[b]``, summed over ``b``.

Values and gradients equal XLA's to float tolerance. The function supports ``jvp``, ``grad``, ``vmap``
and ``linear_transpose`` in ``x``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcert.nets.conv_backends import cf_batch_chunk, im2col_batch_chunk, input_term_choice, kernel_term_choice
from jaxcert.nets.conv_im2col import im2col_conv2d, scanned_im2col_conv2d
from jaxcert.nets.conv_im2col_cf import scanned_im2col_cf_conv2d
from jaxcert.nets.conv_im2col_gt import scanned_im2col_gt_conv2d
from jaxcert.nets.conv_input_phases import phase_conv2d
from jaxcert.nets.conv_swapped import swapped_kernel_conv


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


def swapped_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """XLA's convolution (as :func:`xla_conv2d`) from the kernel stored with its channels swapped
    (:func:`jaxcert.nets.conv_swapped.swapped_kernel_conv`): its input transpose is canonical in loops."""
    return swapped_kernel_conv(x, kernel, (stride, stride), ((padding, padding), (padding, padding)))


def transposed_conv2d(
    rows: jax.Array, kernel: jax.Array, in_shape: tuple[int, ...], stride: int, padding: int
) -> jax.Array:
    """``convᵀ(rows)``, rows ``(N, h, w, O)`` carried back onto the input ``(N, *in_shape)`` of ``conv(·, W)``
    (:func:`jax.linear_transpose`: ``rows ↑ s`` convolved with ``rev(W)`` channels swapped). On CPU it is the
    transpose of :func:`swapped_conv2d`, whose kernel is in XLA:CPU's canonical layout inside loops
    too (alpha-CROWN's slope ascent); elsewhere XLA's own. Same values."""
    primal = jax.ShapeDtypeStruct((rows.shape[0], *in_shape), rows.dtype)

    def by(conv: Callable[..., jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
        return lambda k, a: jax.linear_transpose(lambda x: conv(x, k, stride, padding), primal)(a)[0]

    return jax.lax.platform_dependent(kernel, rows, cpu=by(swapped_conv2d), default=by(xla_conv2d))


def batch_major_conv2d(x: jax.Array, kernel_tangent: jax.Array, stride: int, padding: int) -> jax.Array:
    """``conv(x, dW)`` written so that its transpose, the kernel gradient, is a convolution in XLA:CPU's
    canonical layout wherever it runs: ``x`` stored channels first ``(C, H, W, B)``, ``dW`` as ``(C, kh, kw,
    O)`` and the output as ``(h, w, B, O)`` (each behind :func:`jax.lax.optimization_barrier`, so that XLA's
    simplifier cannot fold the copies back into dimension labels). Its transpose in ``dW`` reads them as a
    batch of ``C`` images ``(B as features)``, a kernel ``(h, w, B, O)`` dilated by the stride, and an output
    ``(C, kh, kw, O)``: ``b01f_01io->b01f``, the form XLA:CPU gives its own kernel gradient outside loops but
    not inside a ``while`` loop (there ``f01b_i01o->01bf``, on its generic path: ~2× the CPU of a CNN3
    gradient in ``lax.map`` over members)."""
    barrier = jax.lax.optimization_barrier
    channels_first = barrier(jnp.transpose(x, (3, 1, 2, 0)))
    kernel_in_first = barrier(jnp.transpose(kernel_tangent, (2, 0, 1, 3)))
    out = jax.lax.conv_general_dilated(
        channels_first,
        kernel_in_first,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
    )
    return jnp.transpose(barrier(out), (2, 0, 1, 3))


def kernel_term(x: jax.Array, kernel_tangent: jax.Array, stride: int, padding: int) -> jax.Array:
    """``conv(x, dW)``, linear in ``dW``, by the implementation each platform's rule chooses for these shapes
    (:func:`jaxcert.nets.conv_backends.kernel_term_choice`; platforms without a rule: XLA's; XLA's on CPU as
    :func:`batch_major_conv2d`)."""
    chunk = im2col_batch_chunk(x.shape, kernel_tangent.shape, stride, padding)
    cf_chunk = cf_batch_chunk(x.shape, kernel_tangent.shape, stride, padding)
    implementations = {
        "xla": xla_conv2d,
        "slices": shifted_slices_conv2d,
        "im2col": im2col_conv2d,
        "im2col-scan": lambda x_, k_, s_, p_: scanned_im2col_conv2d(x_, k_, s_, p_, chunk),
        "im2col-scan-gt": lambda x_, k_, s_, p_: scanned_im2col_gt_conv2d(x_, k_, s_, p_, chunk),
        "im2col-scan-cf": lambda x_, k_, s_, p_: scanned_im2col_cf_conv2d(x_, k_, s_, p_, cf_chunk),
    }
    term = lambda name: lambda x_, dk: implementations[name](x_, dk, stride, padding)
    choices = {
        platform: kernel_term_choice(platform, x.shape, kernel_tangent.shape, stride, padding)
        for platform in ("cpu", "cuda", "rocm", "tpu")
    }
    branches = {platform: term(choice) for platform, choice in choices.items() if choice != "xla"}
    if choices["cpu"] == "xla":
        branches["cpu"] = lambda x_, dk: batch_major_conv2d(x_, dk, stride, padding)
    return jax.lax.platform_dependent(x, kernel_tangent, default=term("xla"), **branches)


def input_term(x_tangent: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """``conv(dx, W)``, linear in ``dx``, by the implementation each platform's rule chooses
    (:func:`jaxcert.nets.conv_backends.input_term_choice`): its transpose is the input gradient. XLA's on
    CPU is :func:`swapped_conv2d` (the same convolution; its transpose runs on XLA:CPU's fast path inside
    loops too)."""
    choices = {
        platform: input_term_choice(platform, x_tangent.shape, kernel.shape, stride, padding)
        for platform in ("cpu", "cuda", "rocm", "tpu")
    }
    implementations = {"xla": xla_conv2d, "phases": phase_conv2d}
    term = lambda name: lambda dx, k: implementations[name](dx, k, stride, padding)
    branches = {platform: term(choice) for platform, choice in choices.items() if choice != "xla"}
    if choices["cpu"] == "xla":
        branches["cpu"] = lambda dx, k: swapped_conv2d(dx, k, stride, padding)
    return jax.lax.platform_dependent(x_tangent, kernel, default=term("xla"), **branches)


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
    out = xla_conv2d(x, kernel, stride, padding)
    return out, input_term(dx, kernel, stride, padding) + kernel_term(x, dkernel, stride, padding)
