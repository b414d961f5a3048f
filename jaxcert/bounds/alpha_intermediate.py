"""alpha-CROWN with optimised intermediate slopes (option ``optimize_intermediate=True`` of "alpha-crown").

Plain alpha-CROWN fixes the pre-activation bounds by one CROWN pass with the min-area slope. Here the
slopes used *inside* the intermediate passes are optimised too, jointly with the final ones (as in
auto_LiRPA's alpha-CROWN):

    pass j (bounds of the input of ReLU j):   slopes β_{j,i} of every earlier ReLU i < j, either
        shared        (B, *neurons_i): one per example and neuron, shared by all rows of the pass, or
        per start node: one per *row* of the pass (per bounded neuron of ReLU j, lower and upper rows
                      apart), as in the reference; layouts in :mod:`jaxcert.bounds.start_node_pass`
    final pass (the spec rows):               slopes α_i (B, R, *neurons_i), one per (row, neuron)

Inside every step the bounds of ReLU j are recomputed from the current slopes and intersected with
reference bounds ``[l*_j, u*_j]``,

    l_j = max(l*_j, CROWN_j(β_{j,·}; l_{<j}, u_{<j})),     u_j = min(u*_j, CROWN_j(β_{j,·}; l_{<j}, u_{<j})),

(any slope in [0, 1] is sound, so the intersection is sound); the upper line of ReLU j is the chord of
``[l_j, u_j]``, so tighter bounds tighten every later pass. Projected Adam ascent
(:mod:`jaxcert.bounds.slope_ascent`) maximises the sum of the final row lower bounds over ``(α, β)``,
gradients flowing through the recomputed bounds (also where the reference bound is kept:
straight-through, see :func:`intermediate_with_slopes`). What is kept (option ``keep_best``):

    "row"      (default) the reference bounds are the tightest seen so far, elementwise (the initial
               CROWN ones at the start); every final row keeps its best value over the steps and the
               slopes that gave it; per-start-node slopes are kept per pass row (where that neuron's
               bound improved), shared ones per example (best sum of its row bounds)
    "example"  the reference bounds are the initial CROWN ones; all slopes are kept per example (the
               step with the largest sum of its row bounds); the rows are those of the kept slopes

The returned rows are recomputed at the kept slopes (differentiable in the parameters, the slopes held
fixed); with "row" their value is raised to the best seen (the kept intermediate bounds and row values,
straight-through: the gradient is that of the recomputed bound). Then the elementwise maximum with CROWN
(the start: min-area intermediate slopes, ``init`` final slopes) is taken, so no row is ever looser than
CROWN.

**Memory** (option ``start_nodes``): per-start-node slopes of pass j cost

    bytes_j ≈ SLOPE_COPIES · itemsize · B · Σ_{i<j} R_j · e_{j,i}
            (R_j = 2 N_j rows, or 2k with ``unstable_budget=k``; e_{j,i} = |neurons_i| for dense rows or
             K_i² C_i for window rows; SLOPE_COPIES = 6: the slopes, Adam's two moments, the kept slopes,
             the gradient and the slopes applied in the pass)

against ``B · Σ_i |neurons_i|`` numbers for shared ones. ``start_nodes=True`` gives every pass per-row
slopes, ``False`` none, ``"auto"`` (default) the passes that fit ``max_slope_bytes`` together, cheapest
first (:func:`start_node_plan`). With the default ``MAX_SLOPE_BYTES`` (4 GiB, float32, Fashion-MNIST /
CIFAR shapes):

    CNN3 (one pass: ReLU 2, 3136 rows × a 4×4×16 window):  19 MB per example: per row up to B = 222
                                                            (B = 128: 2.3 GiB)
    CNN5 (ReLU 2, ReLU 3, the dense 512): 39, 140, 424 MB per example: all three up to B = 7; ReLU 2
                                          alone up to B = 111 (B = 32: ReLU 2 per row, the others shared);
                                          shared everywhere at B = 128
    CNN7 (CIFAR; 1.7, 3.2, 13.9, 33.6, 5.3 GiB per example): ReLU 2 per row at B = 1 or 2, else shared

(:func:`start_node_plan` prints nothing; call it to see the plan of a net and batch.) Certifying a batch in
slices of a few examples gives every pass per-row slopes on CNN5.

Best-per-row keeping costs ``2 · B · Σ_j N_j`` numbers for the kept intermediate bounds and one
``B · R`` for the row values, beside the kept slopes the per-example keeping holds as well.

The first ReLU whose bounds are exact interval ones (at most one mixing affine layer below it) has no
pass and keeps its bounds. ``unstable_budget=k`` gives rows to the ``k`` widest unstable neurons of the
initial bounds per layer; ``patches`` and ``max_rows_bytes`` act as in :mod:`jaxcert.bounds.crown`.

Cost per step: every intermediate CROWN pass plus the final one, forward and backward (about
``2 × steps`` CROWN evaluations), with the activations of all passes kept for the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds.backsub import backsubstitute
from jaxcert.bounds.crown import Interval, LineFn, _interval_is_exact, neuron_bounds, relu_indices
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.neuron_rows import rows_needed, scatter_refined, select_unstable
from jaxcert.bounds.relu_slopes import ReluLines
from jaxcert.bounds.row_chunks import MAX_ROWS_BYTES
from jaxcert.bounds.slope_ascent import tracked_ascent
from jaxcert.bounds.start_node_pass import initial_row_slopes, row_slope_bounds, row_slope_elements
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, shapes

#: ``{"final": {i: (B, R, *n_i)}, "inter": {j: {i: shared (B, *n_i) or per start node}}}``
JointSlopes = dict[str, dict[int, Any]]

#: Copies of the per-start-node slopes alive during the ascent (see the module doc).
SLOPE_COPIES = 6
#: Default limit of the estimated memory of all per-start-node slopes (``start_nodes="auto"``).
MAX_SLOPE_BYTES = 2**32
#: What the ascent keeps (see the module doc).
KEEP_BEST = ("row", "example")


def _rule(arch: Arch, i: int, rule: str) -> Any:
    """The ``rule`` of the non-affine layer ``i`` of ``arch`` (:mod:`jaxcert.bounds.layer_rules`)."""
    return rule_for(arch[i], rule, "alpha-CROWN intermediate slopes")


def _with_slope(arch: Arch, i: int, alpha: jax.Array, lower: jax.Array, upper: jax.Array) -> ReluLines:
    """The min-area relaxation of layer ``i`` on ``[lower, upper]`` with the lower slopes ``alpha``."""
    return _rule(arch, i, "slopes")(_rule(arch, i, "lines")(lower, upper), alpha, lower, upper)


def refined_relus(arch: Arch) -> list[int]:
    """ReLU indices whose bounds come from a CROWN pass (not exact interval ones)."""
    return [j for j in relu_indices(arch) if not _interval_is_exact(arch[:j])]


def check_joint_options(start_nodes: Any, keep_best: Any, max_slope_bytes: Any) -> None:
    """One-line ``ValueError`` for a bad ``start_nodes``, ``keep_best`` or ``max_slope_bytes``."""
    if not (isinstance(start_nodes, bool) or (isinstance(start_nodes, str) and start_nodes == "auto")):
        raise ValueError(f"alpha-crown: start_nodes must be True, False or 'auto', got {start_nodes!r}")
    if not isinstance(keep_best, str) or keep_best not in KEEP_BEST:
        raise ValueError(f"alpha-crown: keep_best must be one of {', '.join(map(repr, KEEP_BEST))}, got {keep_best!r}")
    if isinstance(max_slope_bytes, bool) or not isinstance(max_slope_bytes, int) or max_slope_bytes < 0:
        raise ValueError(f"alpha-crown: max_slope_bytes must be a non-negative int (bytes), got {max_slope_bytes!r}")


def start_node_bytes(
    arch: Arch,
    in_shape: tuple[int, ...],
    batch: int,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    itemsize: int = 4,
) -> dict[int, int]:
    """Estimated bytes of per-start-node slopes for every pass (``bytes_j`` of the module doc)."""
    layer_shapes = shapes(arch, in_shape)
    out = {}
    for j in refined_relus(arch):
        k = rows_needed(unstable_budget, math.prod(layer_shapes[j]))
        out[j] = SLOPE_COPIES * itemsize * batch * row_slope_elements(arch, j, in_shape, k, patches)
    return out


def start_node_plan(
    arch: Arch,
    in_shape: tuple[int, ...],
    batch: int,
    start_nodes: bool | str = "auto",
    max_slope_bytes: int = MAX_SLOPE_BYTES,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    itemsize: int = 4,
) -> frozenset[int]:
    """The passes (ReLU indices) given per-start-node slopes: all (``True``), none (``False``) or, for
    ``"auto"``, the cheapest ones whose estimated bytes (:func:`start_node_bytes`) fit ``max_slope_bytes``."""
    if start_nodes is True:
        return frozenset(refined_relus(arch))
    if start_nodes is False:
        return frozenset()
    chosen, total = set(), 0
    costs = start_node_bytes(arch, in_shape, batch, unstable_budget, patches, itemsize)
    for j, cost in sorted(costs.items(), key=lambda item: item[1]):
        if total + cost <= max_slope_bytes:
            chosen.add(j)
            total += cost
    return frozenset(chosen)


def initial_slopes(
    arch: Arch,
    bounds: Mapping[int, Interval],
    lines: Mapping[int, ReluLines],
    rows: int,
    start_nodes: Collection[int] = (),
    neurons: Mapping[int, Any] | None = None,
    lower: jax.Array | None = None,
    patches: bool | str = "auto",
) -> JointSlopes:
    """The start: min-area slopes for every intermediate pass (per row in the passes ``start_nodes``,
    which need ``neurons`` and ``lower``), the ``init`` slopes for every final row."""
    relus = relu_indices(arch)
    adaptive = {i: _rule(arch, i, "lines")(*bounds[i]).lower_slope for i in relus}
    inter = {}
    for j in refined_relus(arch):
        if j in start_nodes:
            assert neurons is not None and lower is not None, "per-start-node slopes need neurons= and lower="
            inter[j] = initial_row_slopes(arch, j, neurons[j], adaptive, lower, patches)
        else:
            inter[j] = {i: adaptive[i] for i in relus if i < j}
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


def _straight_through(new: jax.Array, value: jax.Array) -> jax.Array:
    """``value``, with the gradient of ``new``."""
    return new + jax.lax.stop_gradient(value - new)


def recompute_passes(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    ref_bounds: Mapping[int, Interval],
    inter: Mapping[int, Mapping[int, jax.Array]],
    neurons: Mapping[int, Any],
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    through: bool = False,
    start_nodes: Collection[int] = (),
) -> tuple[dict[int, Interval], dict[int, jax.Array]]:
    """``(bounds, rows)``: the pre-activation bounds recomputed pass by pass with the slopes ``inter[j][i]``
    (per row in the passes ``start_nodes``), each intersected with ``ref_bounds``, and the lower bounds of
    the rows of every per-start-node pass (:func:`jaxcert.bounds.start_node_pass.row_slope_bounds`)."""
    bounds: dict[int, Interval] = {}
    rows: dict[int, jax.Array] = {}
    for j in relu_indices(arch):
        if j not in inter:
            bounds[j] = ref_bounds[j]
            continue
        if j in start_nodes:
            plain = {i: _rule(arch, i, "lines")(*bounds[i]) for i in bounds}
            rows[j], z_lo, z_hi = row_slope_bounds(
                arch, params, j, neurons[j], plain, bounds, inter[j], lower, upper, patches, max_rows_bytes
            )
        else:
            lines = {i: _with_slope(arch, i, inter[j][i], *bounds[i]) for i in bounds}
            z_lo, z_hi = neuron_bounds(arch, params, j, neurons[j], lines, lower, upper, patches, max_rows_bytes)
        lo0, hi0 = ref_bounds[j]
        new_lo, new_hi = scatter_refined(lo0, hi0, neurons[j], z_lo, z_hi)
        lo, hi = jnp.maximum(lo0, new_lo), jnp.minimum(hi0, new_hi)
        if through:
            lo, hi = _straight_through(new_lo, lo), _straight_through(new_hi, hi)
        bounds[j] = (lo, hi)
    return bounds, rows


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
    start_nodes: Collection[int] = (),
) -> dict[int, Interval]:
    """Pre-activation bounds recomputed pass by pass with the slopes ``inter[j][i]``, each intersected with
    ``init_bounds`` (see the module doc; :func:`recompute_passes` also returns the per-row bounds).

    ``through=True`` (for the optimisation): the value is the intersection, but the gradient always flows
    into the recomputed bound, also where the initial one is kept. At the start the two are equal up to
    rounding, and the gradient of ``max`` at such a near-tie would follow float noise (e.g. differ between
    a jitted ``vmap`` and a loop); this way it is the gradient of the recomputed bound, the useful signal."""
    return recompute_passes(
        arch, params, lower, upper, init_bounds, inter, neurons, patches, max_rows_bytes, through, start_nodes
    )[0]


def final_rows(
    arch: Arch,
    params: LayerParams,
    final: Mapping[int, jax.Array],
    bounds: Mapping[int, Interval],
    line_fn: LineFn,
    A: jax.Array,
    a: jax.Array,
    lower: jax.Array,
    upper: jax.Array,
) -> jax.Array:
    """Row lower bounds (B, R) of ``⟨A, f(x)⟩ + a`` on the pre-activation bounds ``bounds`` with the final
    slopes ``final``."""
    lines = {i: _rule(arch, i, "slopes")(line_fn(i, *b), final[i], *b) for i, b in bounds.items()}
    return backsubstitute(arch, params, A, a, lines, lower, upper)


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
    start_nodes: Collection[int] = (),
) -> jax.Array:
    """Row lower bounds (B, R) of ``⟨A, f(x)⟩ + a`` with the intermediate and final slopes ``slopes``
    (``through``: see :func:`intermediate_with_slopes`)."""
    bounds = intermediate_with_slopes(
        arch, params, lower, upper, init_bounds, slopes["inter"], neurons, patches, max_rows_bytes, through,
        start_nodes,
    )  # fmt: skip
    return final_rows(arch, params, slopes["final"], bounds, line_fn, A, a, lower, upper)


def _scores(
    slopes: JointSlopes, value: jax.Array, rows: Mapping[int, jax.Array], keep_best: str
) -> dict[str, dict[int, Any]]:
    """The score of every slope leaf for :func:`jaxcert.bounds.slope_ascent.tracked_ascent`: per final row,
    per pass row (per-start-node passes) or per example (the sum of its rows), see the module doc."""
    per_example = jnp.sum(value, axis=1)
    if keep_best == "example":
        return jax.tree_util.tree_map(lambda _: per_example, slopes)
    inter = {j: {i: rows.get(j, per_example) for i in leaves} for j, leaves in slopes["inter"].items()}
    return {"final": {i: value for i in slopes["final"]}, "inter": inter}


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
    lr_decay: float | jax.Array = 1.0,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    start_nodes: bool | str = "auto",
    keep_best: str = "row",
    max_slope_bytes: int = MAX_SLOPE_BYTES,
) -> jax.Array:
    """Row lower bounds (B, R) of alpha-CROWN with optimised intermediate slopes (see the module doc).

    ``init_bounds``/``lines`` are the initial CROWN bounds and their ``init`` relaxation; the result is
    differentiable in ``params`` (through the initial bounds too) with the chosen slopes held fixed.
    ``start_nodes``/``max_slope_bytes`` pick the passes with per-start-node slopes (:func:`start_node_plan`),
    ``keep_best`` what the ascent keeps.
    """
    check_joint_options(start_nodes, keep_best, max_slope_bytes)
    plan = start_node_plan(
        arch, lower.shape[1:], lower.shape[0], start_nodes, max_slope_bytes, unstable_budget, patches,
        lower.dtype.itemsize,
    )  # fmt: skip
    neurons = jax.lax.stop_gradient(pass_neurons(arch, init_bounds, unstable_budget))
    start = initial_slopes(arch, init_bounds, lines, A.shape[1], plan, neurons, lower, patches)
    start = jax.lax.stop_gradient(start)
    options = {"patches": patches, "max_rows_bytes": max_rows_bytes, "start_nodes": plan}
    frozen = jax.lax.stop_gradient((params, init_bounds, A, a, lower, upper))

    def objective(slopes: JointSlopes, ref: Mapping[int, Interval]) -> tuple[jax.Array, tuple[Any, Any]]:
        p, _, A_, a_, lo, hi = frozen
        bounds, rows = recompute_passes(arch, p, lo, hi, ref, slopes["inter"], neurons, through=True, **options)
        value = final_rows(arch, p, slopes["final"], bounds, line_fn, A_, a_, lo, hi)
        kept = jax.lax.stop_gradient(bounds) if keep_best == "row" else ref
        return value, (_scores(slopes, value, rows, keep_best), kept)

    best, kept_bounds, best_rows = jax.lax.stop_gradient(
        tracked_ascent(objective, start, frozen[1], steps, lr, lr_decay)
    )
    bounds, _ = recompute_passes(arch, params, lower, upper, init_bounds, best["inter"], neurons, **options)
    if keep_best == "row":  # the tightest bounds seen, the gradient of the recomputed ones
        bounds = {
            j: (_straight_through(lo, jnp.maximum(lo, kept_bounds[j][0])),
                _straight_through(hi, jnp.minimum(hi, kept_bounds[j][1])))
            for j, (lo, hi) in bounds.items()
        }  # fmt: skip
    chosen = final_rows(arch, params, best["final"], bounds, line_fn, A, a, lower, upper)
    if keep_best == "row":
        chosen = _straight_through(chosen, jnp.maximum(chosen, best_rows))
    crown = backsubstitute(arch, params, A, a, lines, lower, upper)
    return jnp.maximum(chosen, crown)
