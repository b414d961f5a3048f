"""LeakyReLU's bound rules, ``y = max(x, a x)`` with ``0 ≤ a < 1`` (see :mod:`jaxcert.bounds.layer_rules`).

LeakyReLU is ReLU plus a linear term, ``y = a x + (1 - a) relu(x)``, so every ReLU relaxation
``α_r x ≤ relu(x) ≤ s_r x + t_r`` gives one of LeakyReLU with the same structure (lower line through the
origin, upper line ``s x + t``):

    interval   [l, u] -> [max(l, a l), max(u, a u)]           (monotone: the ends map to the ends)
    lines      α = a + (1 - a) α_r,  s = a + (1 - a) s_r,  t = (1 - a) t_r

which, with ReLU's lines (:mod:`jaxcert.bounds.relu_slopes`, chord slope ``λ = u / (u - l)``), is

    stable active   (l ≥ 0):  α = s = 1, t = 0                     (y = x, exact)
    stable inactive (u ≤ 0):  α = s = a, t = 0                     (y = a x, exact)
    crossing  (l < 0 < u):    s = (u - a l) / (u - l),  t = -(1 - a) u l / (u - l)
                              (the chord through (l, a l) and (u, u): y ≤ s (x - l) + a l),
                              α = a + (1 - a) α_r ∈ [a, 1]; "adaptive" (min-area): α = 1 if u ≥ -l else a.

Every lower slope ``α ∈ [a, 1]`` is sound: ``x ≥ α x`` for ``x ≥ 0`` and ``a x ≥ α x`` for ``x < 0``. The
"given" rule takes the slopes of the crossing neurons as they are, so they must lie in ``[a, 1]``
(concrete values are checked, traced ones projected). The ``backward`` and ``window`` rules are
ReLU's (:func:`jaxcert.bounds.relu_rules.backward_relu`): they only use the lines.

The rules depend on the layer's ``slope``; :mod:`jaxcert.bounds.layer_rules` binds them to it
(``rule_for`` returns ``partial(rule, negative_slope=spec.slope)``). At ``a = 0`` they equal ReLU's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.bounds.relu_slopes import ReluLines, check_rule, check_slopes, crossing_mask, relu_lines, upper_line

Interval = tuple[jax.Array, jax.Array]


def leaky_relu_interval(lower: jax.Array, upper: jax.Array, *, negative_slope: float) -> Interval:
    """``[max(l, a l), max(u, a u)]``: LeakyReLU is monotone, so the interval maps end to end."""
    return jnp.maximum(lower, negative_slope * lower), jnp.maximum(upper, negative_slope * upper)


def leaky_relu_lines(
    lower: jax.Array,
    upper: jax.Array,
    rule: str = "adaptive",
    *,
    negative_slope: float,
    slopes: jax.Array | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
) -> ReluLines:
    """The relaxation ``(α, s, t)`` of LeakyReLU neurons with pre-activation bounds ``[lower, upper]``:
    ReLU's lines mapped by ``α = a + (1 - a) α_r``, ``s = a + (1 - a) s_r``, ``t = (1 - a) t_r`` (module doc);
    with ``rule="given"``, ``slopes`` are the lower slopes (in ``[a, 1]``) of the crossing neurons."""
    check_rule(rule)
    a = negative_slope
    if rule == "given":
        if slopes is None:
            raise ValueError("the 'given' lower-slope rule needs lower_slopes=")
        given = check_slopes(slopes, lower.shape, low=a)
        r_slope, r_intercept = upper_line(lower, upper)
        stable = jnp.where(lower >= 0, 1.0, a).astype(lower.dtype)
        alpha = jnp.where(crossing_mask(lower, upper), given, stable)
        return ReluLines(alpha, a + (1 - a) * r_slope, (1 - a) * r_intercept)
    r = relu_lines(lower, upper, rule, tau=tau, gamma=gamma)
    return ReluLines(a + (1 - a) * r.lower_slope, a + (1 - a) * r.upper_slope, (1 - a) * r.upper_intercept)
