"""The training state pytree and the trainer interface shared by every method.

``TrainState`` holds only the *trainable* leaves in ``params`` (what optimisers update and GLS perturbs)
and the BatchNorm running statistics in ``frozen`` (see :func:`jaxcert.nets.split_trainable`);
``full_params`` merges them back for evaluation. ``opt_state`` is the optax state, or for PGPE the
evosax state (which contains its own optax state for the mean).

A trainer is ``Trainer(init, step)``: ``init(params) -> TrainState`` and the pure, jitted
``step(state, x, y, key) -> (state, metrics)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from jaxcert.nets.network import LayerParams, merge, split_trainable


@struct.dataclass
class TrainState:
    params: LayerParams
    frozen: LayerParams
    opt_state: Any
    step: jax.Array

    @property
    def full_params(self) -> LayerParams:
        """Trainable and frozen leaves merged: the params ``forward``/bounds take."""
        return merge(self.params, self.frozen)


def new_state(params: LayerParams, opt_state_fn: Callable[[LayerParams], Any]) -> TrainState:
    """A step-0 state: ``params`` split into trainable/frozen, ``opt_state = opt_state_fn(trainable)``."""
    trainable, frozen = split_trainable(params)
    return TrainState(trainable, frozen, opt_state_fn(trainable), jnp.zeros((), jnp.int32))


Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, Metrics]]


class Trainer(NamedTuple):
    """``init(params) -> TrainState`` and the jitted ``step(state, x, y, key) -> (state, metrics)``."""

    init: Callable[[LayerParams], TrainState]
    step: StepFn
