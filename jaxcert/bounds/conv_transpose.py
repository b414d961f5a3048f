"""The transpose of a convolution applied to back-substitution rows, with a gradient that is a plain conv.

Back-substitution carries rows ``A`` back through a convolution ``y = conv(x, W)`` as ``Aᵀ ↦ convᵀ(A, W)``
(:func:`jax.linear_transpose`: a convolution with a dilated input). It is bilinear in ``(W, A)``, and

    ⟨G, convᵀ(A, W)⟩ = ⟨conv(G, W), A⟩,

so its vector-Jacobian product with a cotangent ``G`` (shaped like the convolution's input) is

    ∂A = conv(G, W)                       (a plain forward convolution),
    ∂W = ∂/∂W ⟨conv(G, W), A⟩             (a plain convolution's kernel gradient; on CPU with ≥ 8
                                           input channels one product per kernel tap instead,
                                           :mod:`jaxcert.bounds.conv_kernel_taps`).

Differentiating ``jax.linear_transpose`` instead gives a kernel gradient with both input and kernel
dilation, which XLA:CPU runs ~20× slower than the plain kernel gradient of the same size (CNN3's second
convolution, 9 rows × 128 examples; ``experiments/bench_bounds.py`` measures the train step). The
values are those of :func:`jax.linear_transpose` (on CPU, for strided layers where it pays, computed by
phases, :mod:`jaxcert.bounds.conv_phases`, equal to float tolerance); the gradients agree to float
tolerance.
"""

from __future__ import annotations

import jax

from jaxcert.bounds.conv_kernel_taps import kernel_gradient_by_taps, taps_pay_on_cpu
from jaxcert.bounds.conv_phases import phase_transpose, phases_pay_on_cpu
from jaxcert.nets.convolution import transposed_conv2d
from jaxcert.nets.layers import Conv


def conv_transpose(conv: Conv, kernel: jax.Array, rows: jax.Array, in_shape: tuple[int, ...]) -> jax.Array:
    """``convᵀ`` of ``rows`` (N, *out_shape) onto the input of ``conv`` (N, *in_shape), kernel ``kernel``."""
    forward = lambda k, x: conv.linear({"kernel": k}, x)

    def by_linear_transpose(k: jax.Array, a: jax.Array) -> jax.Array:
        return transposed_conv2d(a, k, in_shape, conv.stride, conv.padding)

    @jax.custom_vjp
    def transpose(k: jax.Array, a: jax.Array) -> jax.Array:
        if not phases_pay_on_cpu(conv, in_shape):
            return by_linear_transpose(k, a)
        return jax.lax.platform_dependent(
            k, a, cpu=lambda k_, a_: phase_transpose(conv, k_, a_, in_shape), default=by_linear_transpose
        )

    def transpose_fwd(k: jax.Array, a: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return transpose(k, a), (k, a)

    def transpose_bwd(residual: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
        k, a = residual
        d_rows, kernel_vjp = jax.vjp(lambda k_: forward(k_, g), k)
        if not taps_pay_on_cpu(k.shape[2]):
            (d_kernel,) = kernel_vjp(a)
            return d_kernel, d_rows
        taps = lambda g_, a_: kernel_gradient_by_taps(g_, a_, k.shape, conv.stride, conv.padding)
        by_xla = lambda g_, a_: kernel_vjp(a_)[0]
        return jax.lax.platform_dependent(g, a, cpu=taps, default=by_xla), d_rows

    transpose.defvjp(transpose_fwd, transpose_bwd)
    dtype = jax.numpy.result_type(kernel, rows)  # one dtype for XLA's convolution (float64 rows under x64)
    return transpose(kernel.astype(dtype), rows.astype(dtype))
