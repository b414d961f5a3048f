"""alpha-CROWN with optimised intermediate slopes (option ``optimize_intermediate=True`` of "alpha-crown").

Plain alpha-CROWN fixes the pre-activation bounds by one CROWN pass with the min-area slope. Here the
slopes used *inside* the intermediate passes are optimised too, jointly with the final ones (as in
auto_LiRPA's alpha-CROWN, which keeps slopes per start node):

    pass j (bounds of the input of ReLU j):   slopes β_{j,i} (B, *neurons_i) of every earlier ReLU i < j
    final pass (the spec rows):               slopes α_i (B, R, *neurons_i), one per (row, neuron)

Inside every step the bounds of ReLU j are recomputed from the current slopes and intersected with the
initial CROWN bounds ``[l⁰_j, u⁰_j]``,

    l_j = max(l⁰_j, CROWN_j(β_{j,·}; l_{<j}, u_{<j})),     u_j = min(u⁰_j, CROWN_j(β_{j,·}; l_{<j}, u_{<j})),

(any slope in [0, 1] is sound, so the intersection is sound and never looser than the initial bounds);
the upper line of ReLU j is the chord of ``[l_j, u_j]``, so tighter bounds tighten every later pass.
Projected Adam ascent (as in :mod:`jaxcert.bounds.alpha_crown`) maximises the sum of the final row lower
bounds over ``(α, β)``, gradients flowing through the recomputed bounds (in the loop also where the
initial bound is kept: straight-through, see :func:`intermediate_with_slopes`). The slopes ``β`` are shared by
the rows of a pass (one per example and neuron, not per start-node neuron: that would cost
``2 N_j`` times more memory, prohibitive on convolutional layers), so rows are not independent; the best
slopes are kept per *example* (the one with the largest sum of its row bounds, the start included). The
returned bounds are recomputed at the kept slopes, then the elementwise maximum with CROWN (the start:
min-area intermediate slopes, ``init`` final slopes) is taken, so no row is ever looser than CROWN.

The first ReLU whose bounds are exact interval ones (at most one mixing affine layer below it) has no
pass and keeps its bounds. ``unstable_budget=k`` gives rows to the ``k`` widest unstable neurons of the
initial bounds per layer; ``patches`` and ``max_rows_bytes`` act as in :mod:`jaxcert.bounds.crown`.

Cost per step: every intermediate CROWN pass plus the final one, forward and backward (about
``2 × steps`` CROWN evaluations), with the activations of all passes kept for the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds.backsub import backsubstitute
from jaxcert.bounds.crown import Interval, LineFn, _interval_is_exact, neuron_bounds, relu_indices
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.neuron_rows import rows_needed, scatter_refined, select_unstable
from jaxcert.bounds.relu_slopes import ReluLines
from jaxcert.bounds.row_chunks import MAX_ROWS_BYTES
from jaxcert.bounds.slope_ascent import projected_ascent
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams

#: ``{"final": {i: (B, R, *n_i)}, "inter": {j: {i: (B, *n_i)}}}``
JointSlopes = dict[str, dict[int, Any]]


def _rule(arch: Arch, i: int, rule: str) -> Any:
    """The ``rule`` of the non-affine layer ``i`` of ``arch`` (:mod:`jaxcert.bounds.layer_rules`)."""
    return rule_for(arch[i], rule, "alpha-CROWN intermediate slopes")


def _with_slope(arch: Arch, i: int, alpha: jax.Array, lower: jax.Array, upper: jax.Array) -> ReluLines:
    """The min-area relaxation of layer ``i`` on ``[lower, upper]`` with the lower slopes ``alpha``."""
    return _rule(arch, i, "slopes")(_rule(arch, i, "lines")(lower, upper), alpha, lower, upper)


def refined_relus(arch: Arch) -> list[int]:
    """ReLU indices whose bounds come from a CROWN pass (not exact interval ones)."""
    return [j for j in relu_indices(arch) if not _interval_is_exact(arch[:j])]


def initial_slopes(
    arch: Arch, bounds: Mapping[int, Interval], lines: Mapping[int, ReluLines], rows: int
) -> JointSlopes:
    """The start: min-area slopes for every intermediate pass, the ``init`` slopes for every final row."""
    relus = relu_indices(arch)
    adaptive = {i: _rule(arch, i, "lines")(*bounds[i]).lower_slope for i in relus}
    inter = {j: {i: adaptive[i] for i in relus if i < j} for j in refined_relus(arch)}
    final = {
        i: jnp.broadcast_to(ln.lower_slope[:, None], (ln.lower_slope.shape[0], rows, *ln.lower_slope.shape[1:]))
        for i, ln in lines.items()
    }
    return {"final": final, "inter": inter}


def pass_neurons(arch: Arch, bounds: Mapping[int, Interval], unstable_budget: int | None) -> dict[int, Any]:
    """Neurons given rows in each pass: ``None`` (all) or the widest unstable ones of the initial bounds."""
    neurons: dict[int, Any] = {}
    for j in refined_relus(arch):
        lo, hi = bounds[j]
        k = rows_needed(unstable_budget, math.prod(lo.shape[1:]))
        neurons[j] = None if k is None else select_unstable(lo, hi, k)
    return neurons


def intermediate_with_slopes(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    init_bounds: Mapping[int, Interval],
    inter: Mapping[int, Mapping[int, jax.Array]],
    neurons: Mapping[int, Any],
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    through: bool = False,
) -> dict[int, Interval]:
    """Pre-activation bounds recomputed pass by pass with the slopes ``inter[j][i]``, each intersected with
    ``init_bounds`` (see the module doc).

    ``through=True`` (for the optimisation): the value is the intersection, but the gradient always flows
    into the recomputed bound, also where the initial one is kept. At the start the two are equal up to
    rounding, and the gradient of ``max`` at such a near-tie would follow float noise (e.g. differ between
    a jitted ``vmap`` and a loop); this way it is the gradient of the recomputed bound, the useful signal."""
    bounds: dict[int, Interval] = {}
    for j in relu_indices(arch):
        if j not in inter:
            bounds[j] = init_bounds[j]
            continue
        lines = {i: _with_slope(arch, i, inter[j][i], *bounds[i]) for i in bounds}
        z_lo, z_hi = neuron_bounds(arch, params, j, neurons[j], lines, lower, upper, patches, max_rows_bytes)
        lo0, hi0 = init_bounds[j]
        new_lo, new_hi = scatter_refined(lo0, hi0, neurons[j], z_lo, z_hi)
        lo, hi = jnp.maximum(lo0, new_lo), jnp.minimum(hi0, new_hi)
        if through:
            lo, hi = new_lo + jax.lax.stop_gradient(lo - new_lo), new_hi + jax.lax.stop_gradient(hi - new_hi)
        bounds[j] = (lo, hi)
    return bounds


def joint_row_bounds(
    arch: Arch,
    params: LayerParams,
    slopes: JointSlopes,
    init_bounds: Mapping[int, Interval],
    neurons: Mapping[int, Any],
    line_fn: LineFn,
    A: jax.Array,
    a: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    through: bool = False,
) -> jax.Array:
    """Row lower bounds (B, R) of ``⟨A, f(x)⟩ + a`` with the intermediate and final slopes ``slopes``
    (``through``: see :func:`intermediate_with_slopes`)."""
    bounds = intermediate_with_slopes(
        arch, params, lower, upper, init_bounds, slopes["inter"], neurons, patches, max_rows_bytes, through
    )
    lines = {i: _rule(arch, i, "slopes")(line_fn(i, *b), slopes["final"][i], *b) for i, b in bounds.items()}
    return backsubstitute(arch, params, A, a, lines, lower, upper)


def joint_alpha_row_bounds(
    arch: Arch,
    params: LayerParams,
    init_bounds: Mapping[int, Interval],
    lines: Mapping[int, ReluLines],
    line_fn: LineFn,
    A: jax.Array,
    a: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
    *,
    steps: int,
    lr: float | jax.Array,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
) -> jax.Array:
    """Row lower bounds (B, R) of alpha-CROWN with optimised intermediate slopes (see the module doc).

    ``init_bounds``/``lines`` are the initial CROWN bounds and their ``init`` relaxation; the result is
    differentiable in ``params`` (through the initial bounds too) with the chosen slopes held fixed.
    """
    neurons = jax.lax.stop_gradient(pass_neurons(arch, init_bounds, unstable_budget))
    start = jax.lax.stop_gradient(initial_slopes(arch, init_bounds, lines, A.shape[1]))
    options = {"patches": patches, "max_rows_bytes": max_rows_bytes}
    frozen = jax.lax.stop_gradient((params, init_bounds, A, a, lower, upper))

    def objective(slopes: JointSlopes) -> jax.Array:
        p, b0, A_, a_, lo, hi = frozen
        return joint_row_bounds(arch, p, slopes, b0, neurons, line_fn, A_, a_, lo, hi, **options, through=True)

    best = jax.lax.stop_gradient(projected_ascent(objective, start, steps, lr, per_example=True))
    chosen = joint_row_bounds(arch, params, best, init_bounds, neurons, line_fn, A, a, lower, upper, **options)
    crown = backsubstitute(arch, params, A, a, lines, lower, upper)
    return jnp.maximum(chosen, crown)
