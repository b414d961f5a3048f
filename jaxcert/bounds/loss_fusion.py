"""Loss fusion for CROWN-IBP training: bound the certified cross-entropy itself with ONE row per example.

The certified loss of :mod:`jaxcert.bounds.loss` back-substitutes one row per margin (``K - 1`` rows per
example). Loss fusion (Xu et al. 2020, the auto_LiRPA library's training option) bounds the worst-case
cross-entropy directly. With ``d_j = z_j - z_y`` (``j ≠ y``) the cross-entropy is

    CE(z, y) = log S,      S = 1 + Σ_j exp(d_j).

1. **Interval bounds** ``l_j ≤ d_j ≤ u_j`` from IBP (the same pass CROWN-IBP uses for its ReLUs).
2. **Chords** of the convex ``exp`` on ``[l_j, u_j]``, shifted by any constant ``M`` (here
   ``M = max(0, max_j u_j)``, which keeps every exponent ≤ 0):

       exp(d_j - M) ≤ exp(l_j - M) + k_j (d_j - l_j),     k_j = (exp(u_j - M) - exp(l_j - M)) / (u_j - l_j)

   (``k_j = exp(l_j - M)``, the tangent, when ``u_j = l_j``). So, on the whole box,

       S e^{-M} ≤ U(x) = e^{-M} + Σ_j (exp(l_j - M) - k_j l_j) + Σ_j k_j d_j(x),

   linear in the logits.
3. **One back-substituted row.** ``Σ_j k_j d_j = -Σ_j k_j m_j`` with the margins ``m_j = z_y - z_j``: the
   row ``Σ_j k_j C_j`` is folded into the last Dense layer and carried back through the network with the
   ReLU lines of CROWN-IBP (IBP pre-activation bounds), which gives ``Ū ≥ max_box U``.
4. **The log.** ``log`` is increasing, so ``max_box CE ≤ M + log Ū``. (This is also the best tangent
   line of the concave ``log`` at ``Ū``.) ``S ≥ 1`` gives ``Ū ≥ e^{-M}``; the bound clamps ``Ū`` there,
   which keeps it sound and finite under rounding.

The result is an upper bound of the cross-entropy at every point of the box, like
:func:`jaxcert.bounds.certified_cross_entropy` of CROWN-IBP's margins, at the cost of one row instead of
``K - 1``. Neither bound is always the tighter one: fusion relaxes the sum of exponentials linearly, the
unfused loss bounds each margin on its own. With ``ε = 0`` both equal the clean cross-entropy.

Training mixes it with IBP like CROWN-IBP: ``β · fused + (1 - β) · CE_cert(IBP margins)``, a convex
combination of two upper bounds (``β = 0`` skips the back-substitution). The fused bound gives no
margins, so :func:`fused_certified_loss` also returns IBP's margin lower bounds (free, and sound) for
the batch's certified accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcert.bounds.backsub import backsubstitute, reject_options
from jaxcert.bounds.box import input_box
from jaxcert.bounds.checks import check_input
from jaxcert.bounds.crown import make_line_fn, relu_indices
from jaxcert.bounds.crown_ibp import check_beta, mix
from jaxcert.bounds.ibp import affine_interval, interval_layers
from jaxcert.bounds.loss import certified_cross_entropy
from jaxcert.bounds.spec import batch_margin_spec, fold_spec
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams


class FusedLoss(NamedTuple):
    """``loss``: per-example upper bound of the cross-entropy over the box, shape (B,);
    ``ibp_margins``: IBP lower bounds of the margins ``z_y - z_j``, shape (B, K-1)."""

    loss: jax.Array
    ibp_margins: jax.Array


def exp_chords(lower: jax.Array, upper: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Chord of ``exp(d - shift)`` over ``[lower, upper]``: ``(value at lower, slope)``, slope ≥ 0.

    ``slope = (e^{u-M} - e^{l-M}) / (u - l)``, computed as ``e^{l-M} · expm1(u - l) / (u - l)`` for
    widths up to 1 (accurate, and the tangent ``e^{l-M}`` at width 0) and as the plain difference
    quotient beyond (no overflow of ``expm1``).
    """
    at_lower = jnp.exp(lower - shift)
    width = upper - lower
    narrow = jnp.minimum(width, 1.0)
    narrow_quotient = jnp.where(narrow > 0, jnp.expm1(narrow) / jnp.where(narrow > 0, narrow, 1.0), 1.0)
    wide = jnp.where(width > 1.0, width, 1.0)
    wide_slope = (jnp.exp(upper - shift) - at_lower) / wide
    return at_lower, jnp.where(width > 1.0, wide_slope, at_lower * narrow_quotient)


def fused_loss_from_box(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    y: jax.Array,
    *,
    beta: float | jax.Array = 1.0,
    lower_slope: str = "adaptive",
    lower_slopes: Sequence[jax.Array] | float | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
    **unknown: Any,
) -> FusedLoss:
    """:class:`FusedLoss` over the box ``[lower, upper]`` (see the module doc); options as CROWN-IBP's."""
    reject_options(unknown, "loss fusion")
    beta_value = check_beta(beta)
    line_fn = make_line_fn(arch, lower_slope, lower_slopes, tau, gamma)
    C = batch_margin_spec(arch, params, lower, y)
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])
    layers = interval_layers(body, body_params, lower, upper)
    margin_lb, margin_ub = affine_interval(*layers[-1], W, b)
    ibp_loss = certified_cross_entropy(margin_lb)
    if beta_value == 0.0:
        return FusedLoss(ibp_loss, margin_lb)
    d_lower, d_upper = -margin_ub, -margin_lb
    shift = jax.lax.stop_gradient(jnp.maximum(jnp.max(d_upper, axis=-1), 0.0))[:, None]
    at_lower, slope = exp_chords(d_lower, d_upper, shift)
    # Σ_j k_j d_j = -Σ_j k_j m_j: lower-bound the row Σ_j k_j m_j, folded into the last layer
    row = jnp.einsum("bhk,bk->bh", W, slope)[:, None, :]
    row_offset = jnp.einsum("bk,bk->b", b, slope)[:, None]
    lines = {i: line_fn(i, *layers[i]) for i in relu_indices(body)}
    weighted_margins_lb = backsubstitute(body, body_params, row, row_offset, lines, lower, upper)[:, 0]
    constant = jnp.exp(-shift[:, 0]) + jnp.sum(at_lower - slope * d_lower, axis=-1)
    u_max = jnp.maximum(constant - weighted_margins_lb, jnp.exp(-shift[:, 0]))
    fused = shift[:, 0] + jnp.log(u_max)
    if beta_value == 1.0:
        return FusedLoss(fused, margin_lb)
    return FusedLoss(mix(beta, fused, ibp_loss), margin_lb)


def fused_certified_loss(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    **options: Any,
) -> FusedLoss:
    """Loss fusion over the clipped ε-ball around ``x`` (labels ``y``): a pure, jittable and vmappable
    function of ``params``; ``options``: ``beta`` and CROWN-IBP's lower-slope options."""
    check_input(arch, params, x)
    lower, upper = input_box(x, eps, lo, hi)
    return fused_loss_from_box(arch, params, lower, upper, y, **options)
