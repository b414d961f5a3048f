"""The forward convolution vmapped over GLS members, as the convolutions XLA:CPU runs fastest.

A population of weight samples (PGPE's members, RGS's samples) evaluates one network under ``N`` kernels.
JAX batches a convolution over kernels in two ways:

- a shared input (a network's first convolution: every member bounds the same input box) becomes one
  ordinary convolution with the members' output channels side by side,
  ``conv(x, [W_1 | … | W_N])[..., m·O:(m+1)·O] = conv(x, W_m)``, which XLA:CPU runs fast;
- a batched input with batched kernels (every later convolution) becomes a *grouped* convolution, which
  XLA:CPU runs several times slower per member than ordinary ones.

Under ``vmap`` this convolution keeps the first and replaces the second, on CPU, by a ``lax.map`` of ordinary
convolutions, ``y_m = conv(x_m, W_m)``. Other backends (the default backend at trace time) keep JAX's
batching: grouped convolutions are native there. So small groups of members get the shared first layer
without the grouped later ones: CNN3's IBP population (32 members × batch 32, 2 cores), 69 ms of CPU in
pairs against 95 ms member by member and 88 ms in pairs with JAX's grouped convolutions
(``experiments/RESULTS.md``).

The rule is a :func:`jax.custom_batching.custom_vmap`, which JAX can neither differentiate in reverse mode
nor ``linear_transpose``: it is the *primal* of :func:`jaxcert.nets.convolution.member_conv2d` only, whose
derivative is ``conv2d``'s own ``custom_jvp`` rule. Forward-only populations (PGPE's certified losses) take
it; gradients keep JAX's batching.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax import custom_batching

Conv = Callable[[jax.Array, jax.Array], jax.Array]


def members_in_loop(conv: Conv, x: jax.Array, kernels: jax.Array) -> jax.Array:
    """``conv(x[m], kernels[m])`` for every ``m``, one ordinary convolution per step of a ``lax.map``."""
    return jax.lax.map(lambda pair: conv(*pair), (x, kernels))


@functools.cache
def member_aware(conv: Conv) -> Conv:
    """``conv`` (a function of ``(x, kernel)``) with the batching rule of the module doc."""

    @custom_batching.custom_vmap
    def convolve(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return conv(x, kernel)

    @convolve.def_vmap
    def batched(axis_size: int, in_batched: list[bool], x: jax.Array, kernel: jax.Array):  # type: ignore[no-untyped-def]
        x_batched, kernel_batched = in_batched
        if x_batched and kernel_batched and jax.default_backend() == "cpu":
            return members_in_loop(conv, x, kernel), True
        in_axes = (0 if x_batched else None, 0 if kernel_batched else None)
        return jax.vmap(conv, in_axes=in_axes)(x, kernel), True

    return convolve
