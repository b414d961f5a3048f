"""BatchNorm statistics of the clean batch: running averages (eval mode) and batch statistics (train mode).

For every BatchNorm layer with input ``h`` on the clean batch (the forward pass normalising with these
same statistics, as in training mode), the batch statistics are

    μ_B = E_batch[h],    σ²_B = Var_batch[h],    over all axes but the channel (last) axis.

- :func:`update_running_stats` moves the running statistics towards them after each step, outside the
  gradient: ``mean ← (1 - m) · mean + m · μ_B``, ``var ← (1 - m) · var + m · σ²_B``. Evaluation and
  certification use the running statistics (eval mode).
- :func:`with_batch_stats` (``bn_mode="batch"``, CROWN-IBP / Shi et al. 2021) wraps an objective so that
  the forward pass AND the bounds use ``(μ_B, σ²_B)`` in place of the running statistics, differentiable in
  the trainable weights. With the statistics fixed, BatchNorm is again an affine map, exact in every
  relaxation: the bounds are sound for the network with those statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcert.nets.graph import walk_forward
from jaxcert.nets.layers import Arch, BatchNorm, LayerSpec
from jaxcert.nets.network import LayerParams, merge

#: ``bn_mode`` values: running statistics (``"eval"``) or the clean batch's statistics (``"batch"``).
BN_MODES = ("eval", "batch")


def check_bn_mode(bn_mode: str) -> None:
    if bn_mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {bn_mode!r}; expected one of {', '.join(BN_MODES)}")


def has_batch_norm(arch: Arch) -> bool:
    return any(isinstance(spec, BatchNorm) for spec in arch)


def batch_stats(arch: Arch, trainable: LayerParams, frozen: LayerParams, x: jax.Array) -> LayerParams:
    """``frozen`` with every BatchNorm layer's ``mean``/``var`` replaced by ``(μ_B, σ²_B)`` of its input on
    ``x`` (differentiable in ``trainable``); other layers' entries unchanged."""
    params = merge(trainable, frozen)
    stats = list(frozen)

    def step(i: int, spec: LayerSpec, h: jax.Array) -> jax.Array:
        p = params[i]
        if isinstance(spec, BatchNorm):
            axes = tuple(range(h.ndim - 1))
            stats[i] = {"mean": jnp.mean(h, axis=axes), "var": jnp.var(h, axis=axes)}
            p = {**p, **stats[i]}
        return spec.apply(p, h)

    walk_forward(arch, x, step, lambda h, skip: h + skip)
    return stats


def update_running_stats(
    arch: Arch, trainable: LayerParams, frozen: LayerParams, x: jax.Array, momentum: float = 0.1
) -> LayerParams:
    """New ``frozen`` (running mean/var) after one EMA step on the batch ``x``; unchanged without BatchNorm."""
    if not has_batch_norm(arch):
        return frozen
    stats = batch_stats(arch, jax.lax.stop_gradient(trainable), frozen, x)
    return jax.tree_util.tree_map(lambda old, new: (1 - momentum) * old + momentum * new, frozen, stats)


def with_batch_stats(arch: Arch, objective: Callable[..., tuple]) -> Callable[..., tuple]:
    """``objective`` evaluated with the batch statistics of the clean batch ``x`` (:func:`batch_stats`) in
    place of the running statistics; ``objective`` itself if ``arch`` has no BatchNorm."""
    if not has_batch_norm(arch):
        return objective

    def batch_mode(trainable, frozen, x, y, step):  # type: ignore[no-untyped-def]
        return objective(trainable, batch_stats(arch, trainable, frozen, x), x, y, step)

    return batch_mode
