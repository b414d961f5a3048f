"""BatchNorm running statistics, updated outside the gradient.

Bounds and losses use BatchNorm in evaluation mode (an affine map, exact in every relaxation). After
each step the running statistics of every BatchNorm layer are moved towards the statistics of its input
on the clean batch (the forward pass normalising with batch statistics, as in training mode):

    mean ← (1 - m) · mean + m · E_batch[h],    var ← (1 - m) · var + m · Var_batch[h],

over all axes but the channel axis. No gradient flows through the statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.nets.layers import Arch, BatchNorm
from jaxcert.nets.network import LayerParams, merge


def has_batch_norm(arch: Arch) -> bool:
    return any(isinstance(spec, BatchNorm) for spec in arch)


def update_running_stats(
    arch: Arch, trainable: LayerParams, frozen: LayerParams, x: jax.Array, momentum: float = 0.1
) -> LayerParams:
    """New ``frozen`` (running mean/var) after one EMA step on the batch ``x``; unchanged without BatchNorm."""
    if not has_batch_norm(arch):
        return frozen
    params = jax.lax.stop_gradient(merge(trainable, frozen))
    new_frozen = []
    h = x
    for spec, p, f in zip(arch, params, frozen, strict=True):
        if isinstance(spec, BatchNorm):
            axes = tuple(range(h.ndim - 1))
            mean, var = jnp.mean(h, axis=axes), jnp.var(h, axis=axes)
            h = (h - mean) * p["scale"] * jax.lax.rsqrt(var + spec.eps) + p["bias"]
            f = {
                "mean": (1 - momentum) * f["mean"] + momentum * mean,
                "var": (1 - momentum) * f["var"] + momentum * var,
            }
        else:
            h = spec.apply(p, h)
        new_frozen.append(f)
    return new_frozen
