"""The gradient trainer every first-order method shares.

Given an objective ``(trainable, frozen, x, y, step[, key]) -> (loss, aux)`` and a gradient estimator
(by default the plain ``jax.value_and_grad``), one step is

    g = ∇_θ L(θ_t),   (u, s_{t+1}) = optimizer.update(g, s_t, θ_t),   θ_{t+1} = θ_t + u,

followed by the BatchNorm running-statistics update (:mod:`jaxcert.train.batch_norm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams
from jaxcert.train.batch_norm import update_running_stats
from jaxcert.train.losses import Objective
from jaxcert.train.state import Trainer, TrainState, new_state

#: ``(trainable, frozen, x, y, step, key) -> (loss, grads, aux)``
GradientEstimator = Callable[..., tuple[jax.Array, LayerParams, dict[str, jax.Array]]]


def plain_gradient(objective: Objective) -> GradientEstimator:
    """The exact gradient ``∇_θ L(θ)`` of ``objective`` (the key is unused)."""
    value_and_grad = jax.value_and_grad(objective, has_aux=True)

    def estimate(trainable, frozen, x, y, step, key):  # type: ignore[no-untyped-def]
        del key
        (loss, aux), grads = value_and_grad(trainable, frozen, x, y, step)
        return loss, grads, aux

    return estimate


def gradient_trainer(
    arch: Arch, estimator: GradientEstimator, optimizer: optax.GradientTransformation, *, bn_momentum: float = 0.1
) -> Trainer:
    """``Trainer`` applying ``optimizer`` to the gradients from ``estimator``."""

    def init(params: LayerParams) -> TrainState:
        return new_state(params, optimizer.init)

    @jax.jit
    def step(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple[TrainState, dict[str, Any]]:
        loss, grads, aux = estimator(state.params, state.frozen, x, y, state.step, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        frozen = update_running_stats(arch, state.params, state.frozen, x, bn_momentum)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        new = TrainState(params, frozen, opt_state, state.step + jnp.ones((), state.step.dtype))
        return new, metrics

    return Trainer(init, step)
