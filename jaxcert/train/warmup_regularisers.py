"""Shi et al. (2021) warm-up regularisers ("Fast Certified Robust Training with Short Warmup", NeurIPS 2021).

Both are computed from the IBP intervals of the clipped ε-ball: ``r_0`` is the mean radius of the input box
(after the leading ``Normalize`` layers, the space the first weights see), and for each of the ``K`` ReLU
layers ``k`` with pre-activation interval ``[l, u]``, centre ``c = (u + l)/2`` and radius ``r = (u - l)/2``
(means over the batch and all neurons). ``τ`` is the tolerance ``tol``.

Bound tightness. The ideal (all ReLUs replaced by their local linear pieces, IBP-initialised) network keeps
the mean radius ``r_0`` layer to layer; IBP's widths grow. The tightness of layer ``k`` is their ratio and
the regulariser pushes it above ``τ``:

    tightness_k = r_0 / mean(r_k),       L_tight = (1/K) Σ_k ReLU(τ - tightness_k) / τ.

ReLU balance. IBP training favours stably inactive neurons (``u < 0``) over stably active ones (``l > 0``).
With masks ``A = [l > 0]``, ``I = [u < 0]``, ``m_c = mean(c)`` and ``ρ(a, b) = min(a, b) / max(a, b)``
(= min(a/b, b/a)),

    ρ_mean = ρ(mean(c · A), -mean(c · I)),    ρ_var = ρ(Σ (c - m_c)² A, Σ (c - m_c)² I),
    L_relu = (1/K) Σ_k (ReLU(τ - ρ_mean) + ReLU(τ - ρ_var)) / τ,

a layer with no stably active and no stably inactive neuron (a ratio 0/0) contributing 0.

The warm-up loss is ``w(ε_t) · (L_tight + L_relu)`` with ``w(ε_t) = λ (1 - ε_t / ε_final)`` while
``0 < ε_t < ε_final`` and 0 otherwise (0 at ε = 0, where the intervals are points, and after the ramp).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.bounds.box import input_box
from jaxcert.bounds.ibp import Interval, interval_layers
from jaxcert.nets.layers import Arch, Normalize, ReLU
from jaxcert.nets.network import LayerParams

_TINY = 1e-12


def check_tol(tol: float) -> None:
    if tol <= 0:
        raise ValueError(f"reg_tol (the regularisers' tolerance τ) must be > 0, got {tol}")


def ibp_relu_intervals(arch: Arch, params: LayerParams, lower: jax.Array, upper: jax.Array) -> tuple[Interval, list]:
    """``(input interval after the leading Normalize layers, [pre-activation interval of each ReLU])``."""
    layers = interval_layers(arch, params, lower, upper)
    first = next((i for i, spec in enumerate(arch) if not isinstance(spec, Normalize)), len(arch))
    return layers[first], [layers[i] for i, spec in enumerate(arch) if isinstance(spec, ReLU)]


def _radius(interval: Interval) -> jax.Array:
    lower, upper = interval
    return jnp.mean((upper - lower) / 2)


def tightness(input_interval: Interval, relu_inputs: list[Interval]) -> jax.Array:
    """``tightness_k = r_0 / mean(r_k)`` for every ReLU layer (shape ``(K,)``)."""
    r0 = _radius(input_interval)
    return jnp.stack([r0 / jnp.maximum(_radius(iv), _TINY) for iv in relu_inputs])


def tightness_loss(input_interval: Interval, relu_inputs: list[Interval], tol: float) -> jax.Array:
    """``L_tight = (1/K) Σ_k ReLU(τ - tightness_k) / τ``."""
    return jnp.mean(jax.nn.relu(tol - tightness(input_interval, relu_inputs)) / tol)


def _ratio(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(min(a, b) / max(a, b), max(a, b) > 0)`` for ``a, b >= 0``."""
    top = jnp.maximum(a, b)
    return jnp.minimum(a, b) / jnp.maximum(top, _TINY), top > 0


def relu_balance(interval: Interval, tol: float) -> jax.Array:
    """One layer's ``(ReLU(τ - ρ_mean) + ReLU(τ - ρ_var)) / τ`` (0 if a ratio is 0/0)."""
    lower, upper = interval
    c = (upper + lower) / 2
    active, inactive = (lower > 0).astype(c.dtype), (upper < 0).astype(c.dtype)
    rho_mean, ok_mean = _ratio(jnp.mean(c * active), -jnp.mean(c * inactive))
    delta = (c - jnp.mean(c)) ** 2
    rho_var, ok_var = _ratio(jnp.sum(delta * active), jnp.sum(delta * inactive))
    loss = (jax.nn.relu(tol - rho_mean) + jax.nn.relu(tol - rho_var)) / tol
    return jnp.where(ok_mean & ok_var, loss, 0.0)


def relu_balance_loss(relu_inputs: list[Interval], tol: float) -> jax.Array:
    """``L_relu = (1/K) Σ_k`` :func:`relu_balance` of layer ``k``."""
    return jnp.mean(jnp.stack([relu_balance(iv, tol) for iv in relu_inputs]))


def warmup_weight(weight: float, eps: jax.Array, eps_final: float) -> jax.Array:
    """``λ (1 - ε_t / ε_final)`` while ``0 < ε_t < ε_final``, else 0."""
    eps = jnp.asarray(eps, jnp.float32)
    if eps_final <= 0:
        return jnp.zeros((), jnp.float32)
    return jnp.where((eps > 0) & (eps < eps_final), weight * (1 - eps / eps_final), 0.0)


def warmup_regularisers(
    arch: Arch, params: LayerParams, x: jax.Array, eps: jax.Array, tol: float, lo: float = 0.0, hi: float = 1.0
) -> dict[str, jax.Array]:
    """``{"reg_tightness": L_tight, "reg_relu": L_relu, "tightness": mean_k tightness_k}`` on the clipped
    ε-ball around ``x`` (an architecture without ReLU: all 0)."""
    lower, upper = input_box(x, eps, lo, hi)
    first, relus = ibp_relu_intervals(arch, params, lower, upper)
    if not relus:
        zero = jnp.zeros((), jnp.float32)
        return {"reg_tightness": zero, "reg_relu": zero, "tightness": zero}
    return {
        "reg_tightness": tightness_loss(first, relus, tol),
        "reg_relu": relu_balance_loss(relus, tol),
        "tightness": jnp.mean(tightness(first, relus)),
    }


def check_warmup(weight: float, tol: float, eps_final: float | None) -> None:
    """``ValueError`` for a negative weight λ, or (λ > 0) a bad ``tol`` or an unknown final ε."""
    if weight < 0:
        raise ValueError(f"reg_weight must be >= 0, got {weight}")
    if weight:
        check_tol(tol)
        if eps_final is None:
            raise ValueError("the warm-up regularisers need the schedule's final eps (RecipeSchedule.eps_final)")


def add_warmup(
    loss: jax.Array, aux: dict, arch: Arch, params: LayerParams, x: jax.Array, eps: jax.Array, *, weight: float,
    tol: float, eps_final: float, lo: float, hi: float,
) -> tuple[jax.Array, dict]:  # fmt: skip
    """``loss + w(ε_t) · (L_tight + L_relu)`` and ``aux`` with the terms and the scheduled weight (λ = 0: as is)."""
    if not weight:
        return loss, aux
    regs = warmup_regularisers(arch, params, x, eps, tol, lo, hi)
    scheduled = warmup_weight(weight, eps, eps_final)
    return loss + scheduled * (regs["reg_tightness"] + regs["reg_relu"]), {**aux, **regs, "reg_weight": scheduled}
