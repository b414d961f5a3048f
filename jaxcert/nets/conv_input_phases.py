"""A strided convolution as ``s²`` stride-1 convolutions on the parity phases of its input.

For stride ``s`` and padding ``p`` (one spatial axis shown; channels contract as usual),

    y[h] = Σ_i x[s·h + i - p] W[i].

Write the input position as ``s·T + φ`` (``φ = 0..s-1``, the phase; ``x_φ[T] = x[s·T + φ]``). Only the taps
``i ≡ φ + p (mod s)``, ``i = s·m + r_φ`` with ``r_φ = (φ + p) mod s`` and ``q_φ = ⌊(φ + p)/s⌋``, read phase
``φ``, at ``T = h + m - q_φ``:

    y = Σ_φ corr(x_φ, W[r_φ::s]),                                   (stride 1, padding q_φ below)

a stride-1 correlation of each phase with its sub-kernel. In two dimensions the phases are the ``s²`` pairs
``(φ_y, φ_x)``, read from ``x`` reshaped to ``(B, H/s, s, W/s, s, C)`` (``x`` first padded with zeros to
multiples of ``s``).

The value equals ``jax.lax.conv_general_dilated`` to float tolerance. It is written for its transpose in
``x``, the input gradient, which JAX derives term by term: each correlation transposes to a stride-1
convolution of the output gradient onto its phase, exactly the phase's size, and the phase reads transpose
to one interleaving fusion. It is the same computation as the back-substitution's
:func:`jaxcert.bounds.conv_phases.phase_transpose`. XLA's own transpose of the strided convolution is a
convolution of the output gradient dilated by ``s`` (zeros between its entries) on Eigen;
:mod:`jaxcert.nets.conv_backends` decides where the phases pay (``experiments/RESULTS.md``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.nets.conv_swapped import swapped_kernel_conv


def _phase_taps(kernel_size: int, stride: int, padding: int, phase: int) -> tuple[int, int, int]:
    """``(r_φ, M_φ, q_φ)``: the first tap, the number of taps ``i = s·m + r_φ < k`` and the offset of phase ``φ``."""
    first = (phase + padding) % stride
    return first, len(range(first, kernel_size, stride)), (phase + padding) // stride


def phase_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The convolution of ``x`` (B, H, W, C) with ``kernel`` (kh, kw, C, O), stride ``stride`` and symmetric
    zero padding ``padding``, as a sum of stride-1 correlations over the input's phases (module doc)."""
    kh, kw, cin, cout = kernel.shape
    batch, height, width, _ = x.shape
    s = stride
    out_h, out_w = (height + 2 * padding - kh) // s + 1, (width + 2 * padding - kw) // s + 1
    phase_h, phase_w = -(-height // s), -(-width // s)
    zero = jnp.zeros((), x.dtype)
    x_even = jax.lax.pad(x, zero, ((0, 0, 0), (0, s * phase_h - height, 0), (0, s * phase_w - width, 0), (0, 0, 0)))
    blocks = x_even.reshape(batch, phase_h, s, phase_w, s, cin)
    # lax.split, not slices: its transpose is one concatenation (the interleave), where slices' would be s²
    # zero-padded copies added up, which XLA:CPU left unfused inside a training step
    by_row = jax.lax.split(blocks, (1,) * s, axis=2)
    out = jnp.zeros((batch, out_h, out_w, cout), jnp.result_type(x, kernel))
    for phase_y in range(s):
        first_y, taps_y, offset_y = _phase_taps(kh, s, padding, phase_y)
        by_col = jax.lax.split(by_row[phase_y], (1,) * s, axis=4)
        for phase_x in range(s):
            first_x, taps_x, offset_x = _phase_taps(kw, s, padding, phase_x)
            if taps_y == 0 or taps_x == 0:  # a kernel smaller than the stride never reads this phase
                continue
            phase = by_col[phase_x]
            high_y = out_h + taps_y - 1 - offset_y - phase_h  # the correlation covers exactly the output
            high_x = out_w + taps_x - 1 - offset_x - phase_w
            out = (
                out
                + swapped_kernel_conv(  # its transpose's kernel canonical inside loops too
                    phase.reshape(batch, phase_h, phase_w, cin),
                    kernel[first_y::s, first_x::s],
                    (1, 1),
                    ((offset_y, high_y), (offset_x, high_x)),
                )
            )
    return out
