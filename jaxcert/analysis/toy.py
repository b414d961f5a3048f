"""A two-neuron network whose certified loss shows every relaxation's discontinuity along one sweep.

Input ``x ∈ [x₀ - ε, x₀ + ε]`` (1-D), hidden pre-activations ``h₁ = x`` (always active) and
``h₂ = x + b``, logits ``z₀ = ReLU(h₂) - ReLU(h₁) + c``, ``z₁ = 0``; label 0, so the margin is

    m(x) = ReLU(x + b) - ReLU(x) + c      (= b + c wherever h₂ is active).

The sweep direction moves ``b ← b + t`` and ``c ← c + slope · t``. Along it the crossing neuron ``h₂``
with bounds ``[l, u] = [x₀ - ε + t, x₀ + ε + t]`` passes

    u = 0   at t = -x₀ - ε      (turns crossing; CROWN with lower slope 1 may jump here)
    u = -l  at t = -x₀          (CROWN / DeepPoly's min-area slope flips 0 ↔ 1: the loss jumps)
    l = 0   at t = ε - x₀       (turns stable active: hBox switches from [0, u] to the symbolic x + b and
                                 the correlation with h₁ returns, so the loss jumps; so does lower slope 0)

while IBP and DeepZ stay continuous. The ``slope`` term keeps the loss moving everywhere, so neighbour
steps of a grid are never all zero.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcert.nets.layers import Arch, Dense, ReLU
from jaxcert.nets.network import LayerParams


class SweepExample(NamedTuple):
    """Network, sweep direction, batch and the sweep positions of the crossing neuron's events."""

    arch: Arch
    params: LayerParams
    direction: LayerParams
    x: jax.Array
    y: jax.Array
    eps: float
    events: dict[str, float]

    def ts(self, n: int = 201) -> jax.Array:
        """A grid of ``n`` sweep positions covering every event, ``[-2 x₀, 0]``."""
        return jnp.linspace(-2.0 * float(self.x[0, 0]), 0.0, n)

    def crossing_bounds(self, ts: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Exact bounds ``(l, u)`` of the swept neuron ``h₂`` at every ``t``."""
        x0 = self.x[0, 0]
        return x0 - self.eps + ts, x0 + self.eps + ts


def bias_sweep_example(x0: float = 0.5, eps: float = 0.1, slope: float = 0.5) -> SweepExample:
    """The network of the module docstring at ``b = c = 0``; needs ``0 < ε < x₀`` so that ``h₁`` is stable."""
    if not 0 < eps < x0:
        raise ValueError(f"need 0 < eps < x0 (h1 = x must stay active), got eps={eps}, x0={x0}")
    arch: Arch = (Dense(2), ReLU(), Dense(2))
    params = [
        {"kernel": jnp.array([[1.0, 1.0]]), "bias": jnp.zeros(2)},
        {},
        {"kernel": jnp.array([[-1.0, 0.0], [1.0, 0.0]]), "bias": jnp.zeros(2)},
    ]
    direction = [
        {"kernel": jnp.zeros((1, 2)), "bias": jnp.array([0.0, 1.0])},
        {},
        {"kernel": jnp.zeros((2, 2)), "bias": jnp.array([slope, 0.0])},
    ]
    events = {"u = 0": -x0 - eps, "u = -l": -x0, "l = 0": eps - x0}
    return SweepExample(arch, params, direction, jnp.array([[x0]]), jnp.array([0]), eps, events)
