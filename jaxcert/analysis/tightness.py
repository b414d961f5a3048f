"""How tight a relaxation's margin bounds are, on a batch.

For the margins ``m_j(x') = z_y(x') - z_j(x')`` (j ≠ y) over the input region with bounds ``lb ≤ m ≤ ub``
and the margins ``m(x)`` at the clean input:

    mean bound width     W   = mean_{i,j} (ub_ij - lb_ij)
    slack                s_ij = m_ij(x_i) - lb_ij                  (≥ 0 for every sound lower bound)
    slack ratio          ρ   = Σ_ij s_ij / Σ_ij s_ij^ref
    certified-loss ratio κ   = mean_i L_cert(lb_i) / mean_i L_cert(lb_i^ref)

``ρ`` follows the Paradox paper's idea of tightness as a ratio of a relaxation's bound to a reference
bound on the same batch (we use the slack of the margin lower bound, which is what the certified loss
sees; the paper's exact normalisation was not available to us). Against the exact reference (MILP, or
a tighter relaxation whose bounds dominate elementwise) ``ρ ≥ 1`` and ``κ ≥ 1``: the exact minimum of
each margin lies between ``lb`` and ``m(x)``. ``1/ρ`` ∈ (0, 1] reads as "tightness" (1 = exact).

References: any registered relaxation name, or ``"lp"`` (the triangle LP) and ``"milp"`` (exact) from
:mod:`jaxcert.bounds.exact` (tiny nets only; numpy, not jittable). :func:`tightness` gives the LP the
relaxation's own pre-activation bounds when :func:`jaxcert.analysis.preactivation_bounds` knows them
(IBP, CROWN-IBP, the CROWN family): the LP is then the tightest convex relaxation of every ReLU with the
same intermediate bounds, hence ``ρ ≥ 1`` against it too. Otherwise (e.g. DeepZ, hBox) the LP uses
interval bounds and may be looser than the relaxation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.bounds import certified_cross_entropy, check_eps, get_relaxation, input_box, margin_spec, output_bounds
from jaxcert.bounds.spec import batch_margin_spec, num_outputs
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward

#: References solved exactly by :mod:`jaxcert.bounds.exact` (name -> function name there).
EXACT_REFERENCES = {"lp": "lp_bounds", "milp": "exact_bounds", "exact": "exact_bounds"}


class Tightness(NamedTuple):
    """Tightness of ``relaxation`` against ``reference`` on one batch (see module docstring)."""

    width: jax.Array
    reference_width: jax.Array
    slack_ratio: jax.Array
    loss_ratio: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def clean_margins(arch: Arch, params: LayerParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """``m_j(x) = z_y(x) - z_j(x)`` for j ≠ y at the clean inputs, shape (B, n-1)."""
    C = margin_spec(y, num_outputs(arch, params))
    return jnp.einsum("bkn,bn->bk", C, forward(arch, params, x))


@functools.cache
def _compiled_bounds(arch: Arch, relaxation: str, lo: float, hi: float, options: tuple) -> Callable[..., Any]:
    """One jitted bound function per (architecture, relaxation, static options)."""

    def fn(params: LayerParams, x: jax.Array, C: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
        return output_bounds(arch, params, x, eps, relaxation=relaxation, C=C, lo=lo, hi=hi, **dict(options))

    return jax.jit(fn)


def _bound_fn(arch: Arch, relaxation: str, lo: float, hi: float, options: dict[str, Any]) -> Callable[..., Any]:
    """The compiled bound function when every option is hashable (strings, numbers), else the plain one."""
    try:
        return _compiled_bounds(arch, relaxation, lo, hi, tuple(sorted(options.items())))
    except TypeError:  # arrays or tracers among the options (or bounds): trace them with the caller
        return lambda params, x, C, eps: output_bounds(
            arch, params, x, eps, relaxation=relaxation, C=C, lo=lo, hi=hi, **options
        )


def margin_bounds(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    relaxation: str = "ibp",
    lo: float = 0.0,
    hi: float = 1.0,
    **options: Any,
) -> tuple[jax.Array, jax.Array]:
    """``(lb, ub)`` of the margins over the clipped ε-ball, shape (B, n-1). ``relaxation`` may be a
    registered name (jitted once per architecture, relaxation and options; traceable, e.g. under
    ``vmap`` over weight samples) or one of :data:`EXACT_REFERENCES` (numpy, concrete values only)."""
    C = batch_margin_spec(arch, params, x, y)
    if relaxation in EXACT_REFERENCES:
        from jaxcert.bounds import exact

        lower, upper = input_box(x, eps, lo, hi)
        fn = getattr(exact, EXACT_REFERENCES[relaxation])
        lb, ub = fn(arch, params, lower, upper, C, **options)
        return jnp.asarray(lb, jnp.float32), jnp.asarray(ub, jnp.float32)
    get_relaxation(relaxation)  # unknown name -> ValueError
    check_eps(eps)
    return _bound_fn(arch, relaxation, lo, hi, options)(params, x, C, eps)


def mean_bound_width(lb: jax.Array, ub: jax.Array) -> jax.Array:
    """``mean(ub - lb)``."""
    return jnp.mean(ub - lb)


def margin_slack(margins: jax.Array, lb: jax.Array) -> jax.Array:
    """``m(x) - lb``: how far the lower bound lies below the clean margin (≥ 0 when sound)."""
    return margins - lb


def slack_ratio(slack: jax.Array, reference_slack: jax.Array) -> jax.Array:
    """``Σ slack / Σ reference_slack`` (``inf`` if the reference has no slack but the relaxation has)."""
    num, den = jnp.sum(slack), jnp.sum(reference_slack)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.where(num > 0, jnp.inf, 1.0))


def certified_loss_ratio(lb: jax.Array, reference_lb: jax.Array) -> jax.Array:
    """``mean L_cert(lb) / mean L_cert(lb_ref)`` (the certified loss is always > 0)."""
    return jnp.mean(certified_cross_entropy(lb)) / jnp.mean(certified_cross_entropy(reference_lb))


def _check_name(name: str) -> None:
    if name not in EXACT_REFERENCES:
        get_relaxation(name)  # ValueError naming the known relaxations


def _own_intermediate(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    eps: float | jax.Array,
    relaxation: str,
    lo: float,
    hi: float,
    options: dict[str, Any] | None,
) -> list[tuple[jax.Array, jax.Array]] | None:
    """The relaxation's pre-activation bounds for the LP reference, or ``None`` (interval bounds)."""
    from jaxcert.analysis.unstable import has_preactivation_bounds, preactivation_bounds

    if not has_preactivation_bounds(relaxation):
        return None
    lower, upper = input_box(x, eps, lo, hi)
    opts = {} if relaxation == "crown-ibp" else dict(options or {})
    return preactivation_bounds(arch, params, lower, upper, relaxation=relaxation, **opts)


def tightness(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    relaxation: str,
    reference: str = "milp",
    lo: float = 0.0,
    hi: float = 1.0,
    options: dict[str, Any] | None = None,
    reference_options: dict[str, Any] | None = None,
) -> Tightness:
    """Width, slack ratio and certified-loss ratio of ``relaxation`` against ``reference`` on ``(x, y)``."""
    _check_name(relaxation)
    _check_name(reference)
    reference_options = dict(reference_options or {})
    if reference == "lp" and "intermediate" not in reference_options:
        reference_options["intermediate"] = _own_intermediate(arch, params, x, eps, relaxation, lo, hi, options)
    lb, ub = margin_bounds(arch, params, x, y, eps, relaxation=relaxation, lo=lo, hi=hi, **(options or {}))
    rlb, rub = margin_bounds(arch, params, x, y, eps, relaxation=reference, lo=lo, hi=hi, **reference_options)
    margins = clean_margins(arch, params, x, y)
    return Tightness(
        width=mean_bound_width(lb, ub),
        reference_width=mean_bound_width(rlb, rub),
        slack_ratio=slack_ratio(margin_slack(margins, lb), margin_slack(margins, rlb)),
        loss_ratio=certified_loss_ratio(lb, rlb),
    )


def as_numpy(t: Tightness) -> dict[str, float]:
    """The fields as Python floats, for tables."""
    return {k: float(np.asarray(v)) for k, v in t._asdict().items()}
