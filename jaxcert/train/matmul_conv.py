"""A convolution that stays fast under ``jax.vmap`` over its kernel, for GLS on CPU.

Vmapping ``lax.conv_general_dilated`` over parameter samples (both the activations and the kernel
carry the sample axis) lowers to a *grouped* convolution, which XLA:CPU runs 5-30x slower than the
same convolutions one sample at a time (see ``experiments/bench_gls.py``). :class:`MatmulConv` computes
the identical map as explicit patches and one contraction,

    y[b, h, w, f] = Σ_{i,j,c} x_pad[b, s·h + i, s·w + j, c] · W[i, j, c, f],

the k² shifted, strided slices of the zero-padded input stacked and contracted with the kernel by an
``einsum``; under ``vmap`` that is a batched matrix product. Parameters (HWIO kernels) are the same as
:class:`jaxcert.nets.Conv`'s, so :func:`matmul_convs` can swap the implementation of a trained
architecture at any time, and every relaxation (written against ``linear``/``abs_linear``) works
unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxcert.nets.layers import Arch, Conv

CONV_IMPLS = ("xla", "matmul")


@dataclasses.dataclass(frozen=True)
class MatmulConv(Conv):
    """:class:`Conv` computed as stacked strided slices contracted with the kernel (vmap-friendly)."""

    def _conv(self, w: jax.Array, x: jax.Array) -> jax.Array:
        k, s, p = self.kernel, self.stride, self.padding
        h_out, w_out, _ = self.out_shape(x.shape[1:])
        xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        rows, cols = s * (h_out - 1) + 1, s * (w_out - 1) + 1
        patches = jnp.stack(
            [xp[:, i : i + rows : s, j : j + cols : s, :] for i in range(k) for j in range(k)], axis=3
        )  # (B, H', W', k², C)
        return jnp.einsum("bhwpc,pcf->bhwf", patches, w.reshape(k * k, w.shape[2], w.shape[3]))


def matmul_convs(arch: Arch) -> Arch:
    """``arch`` with every :class:`Conv` replaced by the equivalent :class:`MatmulConv`."""
    return tuple(MatmulConv(s.features, s.kernel, s.stride, s.padding) if type(s) is Conv else s for s in arch)


def with_conv_impl(arch: Arch, impl: str) -> Arch:
    """``arch`` unchanged for ``"xla"``, with :class:`MatmulConv` layers for ``"matmul"``."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv implementation {impl!r}; expected one of {CONV_IMPLS}")
    return matmul_convs(arch) if impl == "matmul" else arch
