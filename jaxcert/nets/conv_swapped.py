"""A convolution whose transpose in its input keeps XLA:CPU's canonical kernel layout, inside loops too.

The transpose of ``y = conv(x, W)`` in ``x`` (the input gradient, and back-substitution's ``convᵀ``) is

    x̄ = conv(ȳ ↑ s, rev(W)ᵀ)        (ȳ dilated by the stride; W reversed in space, channels swapped),

and JAX writes the channel swap into the convolution's dimension labels (an ``…oi`` kernel), not into
memory. Outside loops XLA:CPU's layout pass copies that kernel into its canonical ``HWIO`` layout and runs
the convolution on its vectorised path; inside a ``while`` loop (a ``fori_loop`` of PGD steps, alpha-CROWN's
slope ascent, ``lax.map`` over GLS members) it does not, and runs the ``b01f_01oi->b01f`` convolution on its
generic path: 5-9× the CPU time (``experiments/RESULTS.md``).

:func:`swapped_kernel_conv` computes the same ``conv(x, W)`` from ``W`` with its channels swapped in memory
(``HWOI``) behind :func:`jax.lax.optimization_barrier` (so that XLA's simplifier cannot fold the copy back into
the labels). JAX's transpose rule swaps the labels back, so the transpose's kernel is read as ``HWIO`` from a
buffer that is laid out that way: canonical wherever the program runs. Same values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def swapped_kernel_conv(
    x: jax.Array, kernel: jax.Array, window_strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
) -> jax.Array:
    """``conv(x, W)``, NHWC input, HWIO kernel (see the module doc), from the kernel stored ``HWOI``."""
    swapped = jax.lax.optimization_barrier(jnp.swapaxes(kernel, 2, 3))
    return jax.lax.conv_general_dilated(x, swapped, window_strides, padding, dimension_numbers=("NHWC", "HWOI", "NHWC"))
