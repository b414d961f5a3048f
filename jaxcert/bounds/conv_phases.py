"""The transpose of a strided convolution as ``s²`` stride-1 convolutions, one per output phase.

For ``y = conv(x, W)`` with stride ``s`` and padding ``p``, ``y[h] = Σ_i x[s·h + i - p] W[i]`` (one
spatial axis shown; channels contract as usual), the transpose maps rows ``A`` on ``y`` to

    convᵀ(A)[t] = Σ_{h, i : s·h + i - p = t} A[h] W[i]ᵀ.

:func:`jax.linear_transpose` computes it as a convolution of ``A`` dilated by ``s`` (zeros between
entries), which spends ``(s² - 1)/s²`` of its multiplications on those zeros and which XLA:CPU runs
about 4× slower than the forward convolution for CNN3's second layer (a one-layer timing). Splitting the
output positions by phase ``t = s·T + φ`` (``φ = 0..s-1``) leaves only the taps ``i ≡ φ + p (mod s)``,
``i = s·m + r_φ``:

    convᵀ(A)[s·T + φ] = Σ_m A[T + q_φ - m] W[s·m + r_φ]ᵀ,      r_φ = (φ + p) mod s,  q_φ = ⌊(φ + p)/s⌋,

a stride-1 correlation of ``A`` with the flipped sub-kernel ``W[r_φ::s]``. The ``s²`` phase outputs
are interleaved into the result (``H`` and ``W`` must be multiples of ``s``). Same values as
:func:`jax.linear_transpose` to float tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.nets.layers import Conv

#: The phases pay on XLA:CPU when the transposed rows land on at least this many channels and every
#: phase keeps at least two taps per axis (kernel ≥ 2 · stride). Measured on CNN3's and CNN7's strided
#: layers with 1152 rows: k=4 or 5, s=2 over 8-16 channels 3.4-4.9× faster; with 1 channel, or k=3, s=2
#: (phases of 2 and 1 taps), XLA's dilated convolution is faster (1.3-1.7×).
MIN_CHANNELS = 8


def phases_pay_on_cpu(conv: Conv, in_shape: tuple[int, ...]) -> bool:
    """Whether the phase decomposition applies (stride > 1, image sides multiples of it) and pays on CPU."""
    height, width, channels = in_shape
    s = conv.stride
    divisible = s > 1 and height % s == 0 and width % s == 0
    return divisible and channels >= MIN_CHANNELS and conv.kernel >= 2 * s


def _phase_taps(kernel_size: int, stride: int, padding: int, phase: int) -> tuple[int, int, int]:
    """``(r_φ, M_φ, q_φ)``: the first tap, the number of taps ``i = s·m + r_φ < k`` and the offset of a phase."""
    first = (phase + padding) % stride
    return first, len(range(first, kernel_size, stride)), (phase + padding) // stride


def phase_transpose(conv: Conv, kernel: jax.Array, rows: jax.Array, in_shape: tuple[int, ...]) -> jax.Array:
    """``convᵀ`` of ``rows`` (N, *out_shape) onto the input of ``conv`` (N, *in_shape) by phases."""
    s, p, k = conv.stride, conv.padding, conv.kernel
    n, out_h, out_w, _ = rows.shape
    height, width, channels = in_shape
    phase_h, phase_w = height // s, width // s
    by_row = []
    for phase_y in range(s):
        first_y, taps_y, offset_y = _phase_taps(k, s, p, phase_y)
        by_col = []
        for phase_x in range(s):
            first_x, taps_x, offset_x = _phase_taps(k, s, p, phase_x)
            if taps_y == 0 or taps_x == 0:  # kernel smaller than the stride: this phase receives nothing
                by_col.append(jnp.zeros((n, phase_h, phase_w, channels), rows.dtype))
                continue
            sub = kernel[first_y::s, first_x::s][::-1, ::-1]  # the phase's taps, flipped: (My, Mx, C, O)
            sub = jnp.swapaxes(sub, 2, 3)  # rows carry the output channels O back to C
            low_y, low_x = taps_y - 1 - offset_y, taps_x - 1 - offset_x
            high_y = phase_h - out_h - low_y + taps_y - 1
            high_x = phase_w - out_w - low_x + taps_x - 1
            by_col.append(
                jax.lax.conv_general_dilated(
                    rows, sub, (1, 1), ((low_y, high_y), (low_x, high_x)), dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
            )
        by_row.append(jnp.stack(by_col, axis=3))  # (N, phase_h, phase_w, s, C)
    return jnp.stack(by_row, axis=2).reshape(n, height, width, channels)  # (N, phase_h, s, phase_w, s, C)
