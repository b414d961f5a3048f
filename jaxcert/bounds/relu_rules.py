"""ReLU's bound rules, one function per rule of :mod:`jaxcert.bounds.layer_rules`.

Every non-affine layer kind provides its rules in :data:`jaxcert.bounds.layer_rules.RULES`; these are
ReLU's (``y = max(x, 0)``):

    interval   [l, u] -> [relu(l), relu(u)]                                 (IBP, CROWN's forward pass)
    lines      α x ≤ y ≤ s x + t from [l, u]: :func:`jaxcert.bounds.relu_slopes.relu_lines`
    slopes     the lower slope of crossing neurons replaced by α ∈ [0, 1]:
               :func:`jaxcert.bounds.relu_slopes.with_lower_slope` (alpha-CROWN, Lee et al.)
    backward   A ← A⁺ α + A⁻ s,  a ← a + ⟨A⁻, t⟩ on dense rows (:mod:`jaxcert.bounds.backsub`)
    window     the same on window rows (:mod:`jaxcert.bounds.patches`), the relaxation gathered on the window
    deepz      y = λ x + μ + μ ε_new (DeepZ's minimal-area parallelogram)
    hbox       crossing neurons become the box [0, u], stable ones are exact

The functions are the ones the relaxations used before the rule table (same operations in the same
order), moved here so that a layer kind's rules live side by side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.bounds import zonotope as zono
from jaxcert.bounds.relu_slopes import ReluLines
from jaxcert.bounds.row_sums import rows_dot_each, sum_window

Interval = tuple[jax.Array, jax.Array]


def relu_interval(lower: jax.Array, upper: jax.Array) -> Interval:
    """``[relu(l), relu(u)]``: ReLU is monotone, so the interval maps end to end."""
    return jax.nn.relu(lower), jax.nn.relu(upper)


def _rows(x: jax.Array, A: jax.Array) -> jax.Array:
    """Insert the row axis into a per-example relaxation field unless it already has one."""
    return x if x.ndim == A.ndim else x[:, None]


def backward_relu(A: jax.Array, const: jax.Array, lines: ReluLines) -> tuple[jax.Array, jax.Array]:
    """``(A⁺ α + A⁻ s, a + ⟨A⁻, t⟩)``: lower line for positive coefficients, upper line for negative ones.

    ``lines.lower_slope`` is (B, *shape) (one slope per neuron) or (B, R, *shape) (one per row).
    """
    alpha = _rows(lines.lower_slope, A)
    slope = _rows(lines.upper_slope, A)
    negative = A < 0
    const = const + rows_dot_each(jnp.where(negative, A, 0.0), lines.upper_intercept)
    return A * jnp.where(negative, slope, alpha), const


def backward_relu_window(
    A: jax.Array, const: jax.Array, alpha: jax.Array, slope: jax.Array, intercept: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """:func:`backward_relu` on window rows ``A`` (…, K, K, C), the relaxation ``(α, s, t)`` gathered on
    each row's window, summed over the window only."""
    negative = A < 0
    const = const + sum_window(jnp.where(negative, A * intercept, 0.0))
    return A * jnp.where(negative, slope, alpha), const


def relu_slope_offset(lower: jax.Array, upper: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(λ, μ)`` of the DeepZ ReLU rule: ``(0, 0)`` if u ≤ 0, ``(1, 0)`` if l ≥ 0, else
    ``(u/(u-l), -λ l/2)``. The crossing branch divides safely so gradients stay finite."""
    crossing = (lower < 0) & (upper > 0)
    denom = jnp.where(crossing, upper - lower, 1.0)
    slope = jnp.where(crossing, upper / denom, (lower >= 0).astype(lower.dtype))
    offset = jnp.where(crossing, -slope * lower / 2, 0.0)
    return slope, offset


def deepz_relu(z: zono.HybridZonotope) -> zono.HybridZonotope:
    """``y = λ x + μ + μ ε_new``: centre ``λc + μ``, generators ``λG``, box part ``λr + μ`` (an existing
    diagonal term and the new one on the same neuron add up to one diagonal term)."""
    slope, offset = relu_slope_offset(*zono.interval_hull(z))
    return zono.HybridZonotope(slope * z.centre + offset, slope[:, None] * z.generators, slope * z.box + offset)


def hbox_relu(z: zono.HybridZonotope) -> zono.HybridZonotope:
    """The hBox ReLU rule (see :mod:`jaxcert.bounds.hbox`), neuron-wise."""
    lower, upper = zono.interval_hull(z)
    active = lower >= 0
    crossing = (lower < 0) & (upper > 0)
    half_upper = upper / 2
    centre = jnp.where(crossing, half_upper, jnp.where(active, z.centre, 0.0))
    generators = jnp.where(active[:, None], z.generators, 0.0)
    box = jnp.where(crossing, half_upper, jnp.where(active, z.box, 0.0))
    return zono.HybridZonotope(centre, generators, box)
