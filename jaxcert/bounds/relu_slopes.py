"""Linear relaxations of ``y = ReLU(x)`` for pre-activation bounds ``l ≤ x ≤ u``.

Every rule returns the three numbers of the relaxation of each neuron,

    lower line:  y ≥ α x                      (α ∈ [0, 1], always through the origin)
    upper line:  y ≤ s x + t

With ``λ = u / (u - l)`` (the slope of the chord, in (0, 1) for a crossing neuron ``l < 0 < u``):

    stable active   (l ≥ 0):  α = 1, s = 1, t = 0          (y = x, exact)
    stable inactive (u ≤ 0):  α = 0, s = 0, t = 0          (y = 0, exact)
    crossing        (l < 0 < u):  s = λ,  t = -λ l,  α from the lower-slope rule below.

Lower-slope rules for crossing neurons (all in ``[0, 1]``, so ``y ≥ α x`` holds on ``[l, u]``):

    "adaptive"  α = 1 if u ≥ -l else 0   (min-area; CROWN / DeepPoly; jumps at u = -l)
    "zero"      α = 0                     (jumps at l = 0, where the neuron turns stable active)
    "one"       α = 1                     (jumps at u = 0, where the neuron turns stable inactive)
    "parallel"  α = λ                     (parallel to the upper line; CAP / Fast-Lin; continuous)
    "zero-c"    α = clip((λ - (1 - τ)) / τ, 0, 1)   continuous version of "zero"
    "one-c"     α = clip(λ / τ, 0, 1)               continuous version of "one"
    "soft"      α = sigmoid(γ (l/u - u/l)) = sigmoid(γ (2λ - 1) / (λ (1 - λ)))   (smooth "adaptive")
    "given"     α = the externally given slope of each neuron (e.g. optimised ones)

The "-c" rules are *our* continuous versions of the fixed rules (the Paradox paper's exact definition
was not available to us): they keep the fixed slope except in a band of relative width ``τ`` next to
the stable side they would otherwise jump at (``λ → 1`` means ``l → 0⁻``, ``λ → 0`` means ``u → 0⁺``),
where they ramp linearly to the exact slope of the stable neuron. Together with the upper line (which
tends to ``y = x`` as ``l → 0⁻`` and to ``y = 0`` as ``u → 0⁺``) this makes the relaxation, hence the
bounds, continuous in ``(l, u)``. "parallel" and "soft" are continuous everywhere as well.

All functions are pure, elementwise, ``jit``/``vmap`` friendly (options may be traced), and guarded
against ``u - l = 0`` (no NaN values or gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ReluLines(NamedTuple):
    """The relaxation ``α x ≤ y ≤ s x + t`` of every neuron, each field shaped like ``l``."""

    lower_slope: jax.Array
    upper_slope: jax.Array
    upper_intercept: jax.Array


def crossing_mask(lower: jax.Array, upper: jax.Array) -> jax.Array:
    """True for crossing (unstable) neurons ``l < 0 < u``."""
    return (lower < 0) & (upper > 0)


def chord_slope(lower: jax.Array, upper: jax.Array) -> jax.Array:
    """``λ = u / (u - l)`` for crossing neurons (in (0, 1)); 0 elsewhere. Safe where ``u = l``."""
    crossing = crossing_mask(lower, upper)
    width = jnp.where(crossing, upper - lower, 1.0)
    return jnp.where(crossing, jnp.where(crossing, upper, 0.0) / width, 0.0)


def _adaptive(lam: jax.Array, **_: object) -> jax.Array:
    return (lam >= 0.5).astype(lam.dtype)  # u ≥ -l  ⟺  u/(u-l) ≥ 1/2


def _zero(lam: jax.Array, **_: object) -> jax.Array:
    return jnp.zeros_like(lam)


def _one(lam: jax.Array, **_: object) -> jax.Array:
    return jnp.ones_like(lam)


def _parallel(lam: jax.Array, **_: object) -> jax.Array:
    return lam


def _zero_c(lam: jax.Array, *, tau: float | jax.Array = 0.1, **_: object) -> jax.Array:
    return jnp.clip((lam - (1.0 - tau)) / tau, 0.0, 1.0)


def _one_c(lam: jax.Array, *, tau: float | jax.Array = 0.1, **_: object) -> jax.Array:
    return jnp.clip(lam / tau, 0.0, 1.0)


def _soft(lam: jax.Array, *, gamma: float | jax.Array = 1.0, **_: object) -> jax.Array:
    # l/u - u/l written with λ; clipping λ to [1e-6, 1 - 1e-6] keeps the value and its gradient finite.
    lam = jnp.clip(lam, 1e-6, 1.0 - 1e-6)
    return jax.nn.sigmoid(gamma * (2.0 * lam - 1.0) / (lam * (1.0 - lam)))


#: Lower-slope rules for crossing neurons: ``rule(λ, **options) -> α`` (elementwise, in [0, 1]).
LOWER_SLOPE_RULES: dict[str, Callable[..., jax.Array]] = {
    "adaptive": _adaptive,
    "zero": _zero,
    "one": _one,
    "parallel": _parallel,
    "zero-c": _zero_c,
    "one-c": _one_c,
    "soft": _soft,
}

#: Every rule name accepted by :func:`relu_lines` ("given" takes the slopes from the caller).
RULE_NAMES: tuple[str, ...] = (*LOWER_SLOPE_RULES, "given")


def check_rule(rule: str) -> None:
    if rule not in RULE_NAMES:
        raise ValueError(f"unknown lower-slope rule {rule!r}; known: {', '.join(RULE_NAMES)}")


def check_rule_options(tau: float | jax.Array, gamma: float | jax.Array) -> None:
    """Raise ``ValueError`` for a concrete ``τ`` outside (0, 1] or a negative / non-finite ``γ``."""
    if not isinstance(tau, jax.core.Tracer):
        t = np.asarray(tau)
        if not np.all((t > 0) & (t <= 1)):
            raise ValueError(f"tau (width of the '-c' ramps) must be in (0, 1], got {tau}")
    if not isinstance(gamma, jax.core.Tracer):
        g = np.asarray(gamma)
        if not np.all(np.isfinite(g) & (g >= 0)):
            raise ValueError(f"gamma (sharpness of the 'soft' rule) must be finite and >= 0, got {gamma}")


def check_slopes(slopes: jax.Array, shape: tuple[int, ...], what: str = "lower_slopes", low: float = 0.0) -> jax.Array:
    """Validate given lower slopes for pre-activations of shape ``shape`` = (B, *neurons).

    Accepted shapes: ``shape`` itself, ``shape[1:]`` (shared by the batch) or ``()`` (one slope for every
    neuron). Concrete values must lie in [low, 1]; traced values are projected onto [low, 1] (the
    relaxation is only sound there; ``low`` is 0 for ReLU, the negative slope ``a`` for LeakyReLU).
    """
    slopes = jnp.asarray(slopes)
    if tuple(slopes.shape) not in (tuple(shape), tuple(shape[1:]), ()):
        raise ValueError(
            f"{what}: expected shape {tuple(shape)} (batch, *neurons), {tuple(shape[1:])} or () (a scalar), "
            f"got {tuple(slopes.shape)}"
        )
    if not isinstance(slopes, jax.core.Tracer):
        s = np.asarray(slopes)
        if not np.all((s >= low) & (s <= 1)):
            raise ValueError(
                f"{what} must lie in [{low:g}, 1] (the lower line α x is only sound there), got "
                f"values in [{s.min()}, {s.max()}]"
            )
    return jnp.broadcast_to(jnp.clip(slopes, low, 1.0), shape)


def lower_slope(
    lower: jax.Array,
    upper: jax.Array,
    rule: str = "adaptive",
    *,
    slopes: jax.Array | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
) -> jax.Array:
    """``α`` of every neuron: the rule's slope for crossing neurons, 1 (active) or 0 (inactive) otherwise."""
    check_rule(rule)
    if rule == "given":
        if slopes is None:
            raise ValueError("the 'given' lower-slope rule needs lower_slopes=")
        alpha = check_slopes(slopes, lower.shape)
    else:
        alpha = LOWER_SLOPE_RULES[rule](chord_slope(lower, upper), tau=tau, gamma=gamma)
    return jnp.where(crossing_mask(lower, upper), alpha, (lower >= 0).astype(lower.dtype))


def upper_line(lower: jax.Array, upper: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(s, t)`` of ``y ≤ s x + t``: the chord ``λ (x - l)`` for crossing neurons, exact for stable ones."""
    lam = chord_slope(lower, upper)
    crossing = crossing_mask(lower, upper)
    slope = jnp.where(crossing, lam, (lower >= 0).astype(lower.dtype))
    intercept = jnp.where(crossing, -lam * lower, 0.0)
    return slope, intercept


def relu_lines(
    lower: jax.Array,
    upper: jax.Array,
    rule: str = "adaptive",
    *,
    slopes: jax.Array | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
) -> ReluLines:
    """The full relaxation ``(α, s, t)`` of ReLU neurons with pre-activation bounds ``[lower, upper]``."""
    alpha = lower_slope(lower, upper, rule, slopes=slopes, tau=tau, gamma=gamma)
    return ReluLines(alpha, *upper_line(lower, upper))


def with_lower_slope(lines: ReluLines, alpha: jax.Array, lower: jax.Array, upper: jax.Array) -> ReluLines:
    """``lines`` with the lower slope of crossing neurons replaced by ``alpha`` (broadcastable, in [0, 1]).

    ``alpha`` may carry extra leading axes after the batch axis (e.g. one slope per spec row), see
    :mod:`jaxcert.bounds.backsub`.
    """
    crossing = crossing_mask(lower, upper)
    if alpha.ndim == lower.ndim + 1:  # (B, R, *neurons): one slope per spec row
        crossing, exact = crossing[:, None], lines.lower_slope[:, None]
    else:
        exact = lines.lower_slope
    return lines._replace(lower_slope=jnp.where(crossing, alpha, exact))
