"""CROWN-IBP (Zhang et al. 2020): IBP pre-activation bounds, one CROWN back-substitution for the output.

The ReLUs are relaxed with the lines of :mod:`jaxcert.bounds.relu_slopes` built from the interval
bounds of :func:`jaxcert.bounds.ibp.interval_layers`; only the output specification is
back-substituted (``2K`` rows per example, cheap compared with CROWN's one row per neuron). Training
mixes it with IBP:

    lb = β · lb_CROWN-IBP + (1 - β) · lb_IBP,      ub = β · ub_CROWN-IBP + (1 - β) · ub_IBP,

sound for β ∈ [0, 1] (a convex combination of two sound bounds). ``beta`` may be traced (then it is
clipped to [0, 1]); a concrete β = 0 skips the back-substitution, a concrete β = 1 the mixing.

Registered: "crown-ibp" (options ``beta``, and the lower-slope options of :mod:`jaxcert.bounds.crown`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.bounds.backsub import backsubstitute, reject_options
from jaxcert.bounds.crown import Interval, LineFn, check_bound_upper, make_line_fn, output_rows, relu_indices
from jaxcert.bounds.ibp import affine_interval, interval_layers
from jaxcert.bounds.registry import RelaxationTraits, register
from jaxcert.bounds.relu_slopes import ReluLines
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams


def ibp_intermediate(
    arch: Arch, params: LayerParams, lower: jax.Array, upper: jax.Array, line_fn: LineFn
) -> tuple[dict[int, Interval], dict[int, ReluLines]]:
    """IBP pre-activation bounds of every ReLU of ``arch`` and their relaxations."""
    layers = interval_layers(arch, params, lower, upper)
    bounds = {i: layers[i] for i in relu_indices(arch)}
    return bounds, {i: line_fn(i, *b) for i, b in bounds.items()}


def ibp_preactivation_bounds(arch: Arch, params: LayerParams, lower: jax.Array, upper: jax.Array) -> list[Interval]:
    """IBP bounds ``(l, u)`` of the input of every ReLU of ``arch`` (in order), each (B, *shape)."""
    layers = interval_layers(arch, params, lower, upper)
    return [layers[i] for i in relu_indices(arch)]


def _concrete(x: Any) -> float | None:
    return None if isinstance(x, jax.core.Tracer) else float(np.asarray(x))


def check_beta(beta: float | jax.Array) -> float | None:
    """β's value when concrete (``None`` when traced); ``ValueError`` outside [0, 1]."""
    beta_value = _concrete(beta)
    if beta_value is not None and not 0.0 <= beta_value <= 1.0:
        raise ValueError(f"crown-ibp: beta must be in [0, 1] (a convex combination keeps bounds sound), got {beta}")
    return beta_value


def mix(beta: float | jax.Array, tight: jax.Array, ibp: jax.Array) -> jax.Array:
    """``β · tight + (1 - β) · ibp`` with β clipped to [0, 1] (a convex combination of two sound bounds)."""
    beta = jnp.clip(jnp.asarray(beta, tight.dtype), 0.0, 1.0)
    return beta * tight + (1 - beta) * ibp


def crown_ibp_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    *,
    beta: float | jax.Array = 1.0,
    lower_slope: str = "adaptive",
    lower_slopes: Sequence[jax.Array] | float | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
    bound_upper: bool = True,
    **unknown: Any,
) -> tuple[jax.Array, jax.Array]:
    """CROWN-IBP bounds ``(lb, ub)`` of ``C f(x)`` mixed with IBP by ``beta`` (see the module doc);
    ``bound_upper=False`` back-substitutes the lower rows only (``ub`` is then the IBP bound)."""
    reject_options(unknown, "crown-ibp")
    check_bound_upper(bound_upper)
    beta_value = check_beta(beta)
    line_fn = make_line_fn(arch, lower_slope, lower_slopes, tau, gamma)
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])
    layers = interval_layers(body, body_params, lower, upper)
    lb_ibp, ub_ibp = affine_interval(*layers[-1], W, b)
    if beta_value == 0.0:
        return lb_ibp, ub_ibp
    lines = {i: line_fn(i, *layers[i]) for i in relu_indices(body)}
    A, a, finish = output_rows(W, b, bound_upper, layers[-1])
    lb, ub = finish(backsubstitute(body, body_params, A, a, lines, lower, upper))
    if beta_value == 1.0:
        return lb, ub
    return mix(beta, lb, lb_ibp), mix(beta, ub, ub_ibp)


register(
    "crown-ibp", crown_ibp_bounds, beta=1.0,
    traits=RelaxationTraits(cost=2, one_sided=True, beta_mixable=True, fusable=True),
)  # fmt: skip
