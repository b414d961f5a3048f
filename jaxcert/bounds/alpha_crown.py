"""Optimised lower slopes: alpha-CROWN (projected gradient) and the slopes of Lee et al. (2021).

Both fix the pre-activation bounds first (option ``intermediate``: "crown" = CROWN with the min-area
slope, see :mod:`jaxcert.bounds.crown`, or "ibp" = interval bounds, as in CROWN-IBP), then choose the
lower slopes ``α`` of the crossing neurons used in the output back-substitution. Any ``α ∈ [0, 1]``
gives sound bounds, so the choice only affects tightness.

**alpha-CROWN** ("alpha-crown"; Xu et al. 2021): one slope per (output row, neuron), so every row of
the two-sided specification ``[C; -C]`` (lower bounds and negated upper bounds) is optimised on its
own. Starting from the ``init`` rule (min-area), ``steps`` iterations of projected gradient ascent with
Adam (learning rate ``lr · lr_decay^t`` at step ``t``; ``lr_decay`` = 0.98 by default, auto_LiRPA's
schedule) maximise the sum of the row lower bounds,

    α ← Π_[0,1](α + Adam_{lr·lr_decay^t}(∇_α Σ_rows lb_row(α))),

inside a ``lax.fori_loop`` (jittable, vmappable). For each row the best slopes seen are kept (the
initial ones included, so the result is never looser than CROWN with the ``init`` rule). The loop
runs on ``stop_gradient``-ed inputs; the returned bounds are recomputed once at the chosen slopes and
are differentiable in the parameters (the slopes held fixed).

**Optimised intermediate slopes** (option ``optimize_intermediate=True``; registered as
"alpha-crown-full"): the slopes ``β_{j,i}`` of ReLU ``i`` used inside the CROWN pass that bounds ReLU
``j > i`` are optimised too, jointly with ``α``, by the same ascent on ``Σ_rows lb_row(α, β)``; each step
recomputes the pre-activation bounds from ``β`` and intersects them with the initial ones,
``l_j = max(l*_j, CROWN_j(β))``, ``u_j = min(u*_j, CROWN_j(β))`` (``l*``, ``u*``: the tightest bounds seen).
Options ``start_nodes`` (True | False | "auto": slopes ``β`` per start-node row, as in auto_LiRPA, where
their memory fits ``max_slope_bytes``) and ``keep_best`` ("row" | "example"). See
:mod:`jaxcert.bounds.alpha_intermediate` (never looser than CROWN).

**Lee et al. slopes** ("crown-lee"): one sign-gradient step on the certified loss picks, per neuron,
``α = 1`` where ``∂L/∂α < 0`` at the min-area slopes and ``α = 0`` otherwise. ``L`` is the certified
cross-entropy of the margin lower bounds when a spec ``C`` is given, else the total width
``Σ (ub - lb)``. The same slopes are used for the lower and the upper bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.bounds.alpha_intermediate import MAX_SLOPE_BYTES, check_joint_options, joint_alpha_row_bounds
from jaxcert.bounds.backsub import backsubstitute, reject_options, split_two_sided, two_sided_rows
from jaxcert.bounds.crown import Interval, check_bound_upper, crown_intermediate, make_line_fn, output_rows
from jaxcert.bounds.crown_ibp import ibp_intermediate
from jaxcert.bounds.ibp import interval_layers
from jaxcert.bounds.layer_rules import activation_indices, rule_for
from jaxcert.bounds.loss import certified_cross_entropy
from jaxcert.bounds.registry import RelaxationTraits, register
from jaxcert.bounds.relu_slopes import ReluLines
from jaxcert.bounds.row_chunks import MAX_ROWS_BYTES
from jaxcert.bounds.slope_ascent import projected_ascent
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams

Slopes = dict[int, jax.Array]


def fixed_intermediate(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    intermediate: str,
    init: str = "adaptive",
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
    **crown_options: Any,
) -> tuple[dict[int, Interval], dict[int, ReluLines], Interval]:
    """Pre-activation bounds by ``intermediate`` ("crown" | "ibp"), the ``init`` relaxation on them, and
    the interval of the output of ``arch``. ``crown_options`` (``unstable_budget``, ``patches``) go to
    :func:`jaxcert.bounds.crown.crown_intermediate`."""
    line_fn = make_line_fn(arch, init, None, tau, gamma)
    if intermediate == "crown":
        # the intermediate CROWN passes always use the min-area slope
        crown_lines = make_line_fn(arch, "adaptive")
        bounds, _, out = crown_intermediate(arch, params, lower, upper, crown_lines, **crown_options)
        return bounds, {i: line_fn(i, *b) for i, b in bounds.items()}, out
    if intermediate == "ibp":
        bounds, lines = ibp_intermediate(arch, params, lower, upper, line_fn)
        return bounds, lines, interval_layers(arch, params, lower, upper)[-1]
    raise ValueError(f"intermediate must be 'crown' or 'ibp', got {intermediate!r}")


def bounds_with_slopes(
    body: Arch,
    body_params: LayerParams,
    slopes: Mapping[int, jax.Array],
    bounds: Mapping[int, Interval],
    lines: Mapping[int, ReluLines],
    A: jax.Array,
    a: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
) -> jax.Array:
    """Row lower bounds (B, R) with the crossing neurons' lower slopes replaced by ``slopes``."""
    new_lines = {i: rule_for(body[i], "slopes", "alpha-CROWN slopes")(lines[i], slopes[i], *bounds[i]) for i in lines}
    return backsubstitute(body, body_params, A, a, new_lines, lower, upper)


def frozen_bounds_fn(body: Arch, *fixed: Any) -> Callable[[Slopes], jax.Array]:
    """``slopes ↦ bounds_with_slopes(body, body_params, slopes, bounds, lines, A, a, lower, upper)`` for
    ``fixed = (body_params, bounds, lines, A, a, lower, upper)``, all ``stop_gradient``-ed: a function of
    the slopes alone, to differentiate or optimise without tracing gradients into the network."""
    body_params, *rest = jax.lax.stop_gradient(fixed)
    return lambda slopes: bounds_with_slopes(body, body_params, slopes, *rest)


def _check_steps(steps: Any, lr: Any, lr_decay: Any = 1.0) -> None:
    if not isinstance(steps, int | np.integer) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"alpha-crown: steps must be a non-negative Python int, got {steps!r}")
    if not isinstance(lr, jax.core.Tracer) and not float(np.asarray(lr)) > 0:
        raise ValueError(f"alpha-crown: lr must be > 0, got {lr}")
    if not isinstance(lr_decay, jax.core.Tracer) and not 0 < float(np.asarray(lr_decay)) <= 1:
        raise ValueError(f"alpha-crown: lr_decay must be in (0, 1], got {lr_decay}")


def alpha_crown_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    *,
    steps: int = 20,
    lr: float | jax.Array = 0.1,
    lr_decay: float | jax.Array = 0.98,
    intermediate: str = "crown",
    init: str = "adaptive",
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
    bound_upper: bool = True,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    optimize_intermediate: bool = False,
    start_nodes: bool | str | None = None,
    keep_best: str | None = None,
    max_slope_bytes: int | None = None,
    **unknown: Any,
) -> tuple[jax.Array, jax.Array]:
    """alpha-CROWN bounds ``(lb, ub)`` of ``C f(x)`` over ``[lower, upper]`` (see the module doc).

    ``bound_upper=False`` optimises and back-substitutes the lower rows only (the upper bound is the
    interval one); ``lr_decay`` multiplies the learning rate after every step (0.98, as auto_LiRPA's
    alpha-CROWN; 1: constant); ``unstable_budget``, ``patches`` and ``max_rows_bytes`` are the options of the
    intermediate CROWN passes. ``optimize_intermediate=True`` also optimises the slopes used inside the
    intermediate passes (:mod:`jaxcert.bounds.alpha_intermediate`; needs ``intermediate="crown"``), with
    the options ``start_nodes`` (default "auto"), ``keep_best`` (default "row") and ``max_slope_bytes``
    (default :data:`jaxcert.bounds.alpha_intermediate.MAX_SLOPE_BYTES`).
    """
    reject_options(unknown, "alpha-crown")
    _check_steps(steps, lr, lr_decay)
    check_bound_upper(bound_upper)
    if not isinstance(optimize_intermediate, bool):
        raise ValueError(f"alpha-crown: optimize_intermediate must be True or False, got {optimize_intermediate!r}")
    if optimize_intermediate and intermediate != "crown":
        raise ValueError(f"alpha-crown: optimize_intermediate=True needs intermediate='crown', got {intermediate!r}")
    joint = {"start_nodes": start_nodes, "keep_best": keep_best, "max_slope_bytes": max_slope_bytes}
    given = sorted(name for name, value in joint.items() if value is not None)
    if given and not optimize_intermediate:
        raise ValueError(f"alpha-crown: {', '.join(given)} only apply with optimize_intermediate=True (full)")
    defaults = {"start_nodes": "auto", "keep_best": "row", "max_slope_bytes": MAX_SLOPE_BYTES}
    joint = {name: defaults[name] if value is None else value for name, value in joint.items()}
    check_joint_options(**joint)
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])
    activation_indices(body, "slopes", "alpha_crown_bounds")
    bounds, lines, out = fixed_intermediate(
        body, body_params, lower, upper, intermediate, init, tau, gamma, unstable_budget=unstable_budget,
        patches=patches, max_rows_bytes=max_rows_bytes,
    )  # fmt: skip
    A, a, finish = output_rows(W, b, bound_upper, out)
    if optimize_intermediate:
        line_fn = make_line_fn(body, init, None, tau, gamma)
        return finish(
            joint_alpha_row_bounds(
                body, body_params, bounds, lines, line_fn, A, a, lower, upper, steps=steps, lr=lr, lr_decay=lr_decay,
                unstable_budget=unstable_budget, patches=patches, max_rows_bytes=max_rows_bytes, **joint,
            )
        )  # fmt: skip
    rows = A.shape[1]
    init_slopes = {
        i: jnp.broadcast_to(ln.lower_slope[:, None], (ln.lower_slope.shape[0], rows, *ln.lower_slope.shape[1:]))
        for i, ln in lines.items()
    }
    objective = frozen_bounds_fn(body, body_params, bounds, lines, A, a, lower, upper)
    best = jax.lax.stop_gradient(
        projected_ascent(objective, jax.lax.stop_gradient(init_slopes), steps, lr, lr_decay=lr_decay)
    )
    return finish(bounds_with_slopes(body, body_params, best, bounds, lines, A, a, lower, upper))


def lee_slopes(
    body: Arch,
    body_params: LayerParams,
    bounds: Mapping[int, Interval],
    lines: Mapping[int, ReluLines],
    A: jax.Array,
    a: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
    use_certified_loss: bool,
) -> Slopes:
    """Lee et al. slopes: ``α = 1`` where the loss gradient at the current slopes is negative, else 0."""
    row_bounds = frozen_bounds_fn(body, body_params, bounds, lines, A, a, lower, upper)

    def loss(slopes: Slopes) -> jax.Array:
        lb, ub = split_two_sided(row_bounds(slopes))
        return jnp.sum(certified_cross_entropy(lb)) if use_certified_loss else jnp.sum(ub - lb)

    grads = jax.grad(loss)(jax.lax.stop_gradient({i: ln.lower_slope for i, ln in lines.items()}))
    return {i: (g < 0).astype(g.dtype) for i, g in grads.items()}


def lee_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    *,
    intermediate: str = "crown",
    **unknown: Any,
) -> tuple[jax.Array, jax.Array]:
    """CROWN bounds with the Lee et al. (2021) slope choice (see the module doc)."""
    reject_options(unknown, "crown-lee")
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])
    activation_indices(body, "slopes", "lee_bounds")
    bounds, lines, _ = fixed_intermediate(body, body_params, lower, upper, intermediate)
    A, a = two_sided_rows(W, b)
    slopes = lee_slopes(body, body_params, bounds, lines, A, a, lower, upper, use_certified_loss=C is not None)
    lbs = bounds_with_slopes(body, body_params, slopes, bounds, lines, A, a, lower, upper)
    return split_two_sided(lbs)


register(
    "alpha-crown", alpha_crown_bounds, traits=RelaxationTraits(cost=5, one_sided=True), steps=20, lr=0.1,
    intermediate="crown",
)  # fmt: skip
#: alpha-CROWN whose intermediate passes' slopes are optimised too (jointly with the final ones).
register(
    "alpha-crown-full", alpha_crown_bounds, traits=RelaxationTraits(cost=6, one_sided=True), steps=20, lr=0.1,
    intermediate="crown", optimize_intermediate=True,
)  # fmt: skip
register("crown-lee", lee_bounds, traits=RelaxationTraits(cost=5), intermediate="crown")
