"""One jitted program bounding a fixed-size batch of domains of one example (branch and bound's step).

A domain is the example's input box ``[lower, upper]`` with the split vector ``s`` (:mod:`.layout`).
For a batch of ``D`` domains (the rows of ``splits`` (D, N); the domains ride on CROWN's batch axis, so
the program is the per-domain bound vectorised over them, one compilation for every step), it computes

    bounds      CROWN's pre-activation bounds, layer by layer, intersected with the bounds the domain
                inherits (``known_lower``/``known_upper`` (D, N), its parent's: the child's region is a
                subset of the parent's, so they hold on it too) and then clamped to its splits
                (:func:`jaxcert.bounds.crown.crown_intermediate` with ``known=`` and ``splits=``), so
                later layers use the tightened bounds:

                    [l, u]  =  clamp_s([max(l_CROWN, l_parent), min(u_CROWN, u_parent)])

                (``±inf`` inherited bounds, the root's, change nothing);
    lower       the lower bounds (D, K) of the margin rows ``C f(x)`` by the output back-substitution,
                with min-area slopes, or with the final slopes optimised by ``alpha_steps`` steps of
                alpha-CROWN (projected Adam, best per row; intermediate bounds as above), each row's
                then raised to its inherited bound (``known_rows`` (D, K), the parent's):
                ``max(lb_CROWN, lb_parent)``;
    pre_lower,  the pre-activation bounds above, flat (D, N) as in :mod:`.layout`: what the domain's
    pre_upper   children inherit;
    empty       whether the splits contradict the bounds (some ``l > u``: the domain has no point);
    choice      the neuron to split next (:mod:`.branching`; the gradient ``∂lb/∂t`` of the output pass
                with respect to the upper lines' intercepts is its ``A⁻``);
    x, margin   the attack (:mod:`.attack`) from the minimiser of each domain's linear bound of its
                worst row: the box corner ``x₀ = lower where A > 0, upper where A < 0`` (``A`` = the row's
                input coefficients, the gradient of the bound with respect to the box ends);
    active      each neuron's phase under the domain's bounds (``l ≥ 0``), for :mod:`.linear_leaf`.

The bounds are valid on each domain (any input of the box satisfying its splits); the attack points
lie in the box (not necessarily in the domain), which is all a counterexample needs.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcert.bab.attack import descend_margin
from jaxcert.bab.branching import choose_neuron, neuron_scores
from jaxcert.bab.layout import LayerSlot, flatten, unflatten
from jaxcert.bounds.alpha_crown import frozen_bounds_fn
from jaxcert.bounds.backsub import backsubstitute
from jaxcert.bounds.crown import crown_intermediate, make_line_fn, output_rows
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.relu_splits import is_empty
from jaxcert.bounds.slope_ascent import projected_ascent
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward


class DomainBounds(NamedTuple):
    """What :func:`bound_domains` returns for a batch of ``D`` domains (see the module doc)."""

    lower: jax.Array  # (D, K) margin row lower bounds
    empty: jax.Array  # (D,) bool
    choice: jax.Array  # (D,) flat neuron index to split next
    has_choice: jax.Array  # (D,) bool: some crossing neuron is left
    x: jax.Array  # (D, *input) attack points in the box
    margin: jax.Array  # (D,) f(x)_y - max_{j≠y} f(x)_j
    active: jax.Array  # (D, N) bool: the neuron's lower bound is ≥ 0 (its phase, once no neuron crosses)
    pre_lower: jax.Array  # (D, N) pre-activation lower bounds (what the children inherit)
    pre_upper: jax.Array  # (D, N) pre-activation upper bounds


def _optimised_lines(
    body: Arch, body_params: LayerParams, bounds: Any, lines: Any, A: Any, a: Any, lo: Any, hi: Any, steps: int
) -> Any:
    """The relaxations with the final lower slopes of alpha-CROWN (one per row and neuron, best per row;
    :func:`jaxcert.bounds.slope_ascent.projected_ascent`, learning rate 0.1)."""
    rows = A.shape[1]
    start = {
        i: jnp.broadcast_to(ln.lower_slope[:, None], (ln.lower_slope.shape[0], rows, *ln.lower_slope.shape[1:]))
        for i, ln in lines.items()
    }
    objective = frozen_bounds_fn(body, body_params, bounds, lines, A, a, lo, hi)
    best = jax.lax.stop_gradient(projected_ascent(objective, jax.lax.stop_gradient(start), steps, 0.1))
    return {i: rule_for(body[i], "slopes", "branch and bound (alpha)")(lines[i], best[i], *bounds[i]) for i in lines}


def bound_domains(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array,
    y: jax.Array,
    splits: jax.Array,
    known_lower: jax.Array,
    known_upper: jax.Array,
    known_rows: jax.Array,
    *,
    layout: tuple[LayerSlot, ...],
    alpha_steps: int = 0,
    attack_steps: int = 10,
) -> DomainBounds:
    """Bounds, branching choice and attack of the ``D`` domains ``splits`` (D, N) of one example with box
    ``[lower, upper]`` (*input), margin spec ``C`` (K, outputs) and label ``y`` (a scalar); each domain
    inherits the pre-activation bounds ``known_lower``/``known_upper`` (D, N) and margin row bounds
    ``known_rows`` (D, K) (its parent's; ``-inf``/``+inf`` for none)."""
    batch = splits.shape[0]
    lo, hi = (jnp.broadcast_to(v, (batch, *v.shape)) for v in (lower, upper))
    body, body_params, W, b = fold_spec(arch, params, jnp.broadcast_to(C, (batch, *C.shape)), batch)
    parent_lo, parent_hi = unflatten(known_lower, layout), unflatten(known_upper, layout)
    known = {i: (parent_lo[i], parent_hi[i]) for i in parent_lo}
    bounds, lines, out = crown_intermediate(
        body, body_params, lo, hi, make_line_fn(body, "adaptive"), splits=unflatten(splits, layout), known=known
    )
    A, a, _ = output_rows(W, b, False, out)
    if alpha_steps > 0:
        lines = _optimised_lines(body, body_params, bounds, lines, A, a, lo, hi, alpha_steps)

    def output_pass(intercepts: dict, box_lo: jax.Array, box_hi: jax.Array) -> jax.Array:
        relaxed = {i: lines[i]._replace(upper_intercept=intercepts[i]) for i in lines}
        return backsubstitute(body, body_params, A, a, relaxed, box_lo, box_hi)

    intercepts = {i: ln.upper_intercept for i, ln in lines.items()}
    row_lower, pullback = jax.vjp(output_pass, intercepts, lo, hi)
    row_lower = jnp.maximum(row_lower, known_rows)
    open_rows = (row_lower <= 0).astype(row_lower.dtype)
    intercept_grads, _, _ = pullback(open_rows)
    worst_row = jax.nn.one_hot(jnp.argmin(row_lower, axis=1), row_lower.shape[1], dtype=row_lower.dtype)
    _, toward_lower, toward_upper = pullback(worst_row)
    start = jnp.where(toward_lower > 0, lo, jnp.where(toward_upper < 0, hi, (lo + hi) / 2))
    choice, has_choice = choose_neuron(neuron_scores(bounds, intercepts, intercept_grads, layout))
    empty = functools.reduce(jnp.logical_or, [is_empty(*bounds[s.index]) for s in layout], jnp.zeros(batch, bool))
    labels = jnp.full((batch,), y)
    x, margin = descend_margin(lambda v: forward(arch, params, v), start, labels, lo, hi, attack_steps)
    pre_lower = flatten({s.index: bounds[s.index][0] for s in layout}, layout)
    pre_upper = flatten({s.index: bounds[s.index][1] for s in layout}, layout)
    return DomainBounds(row_lower, empty, choice, has_choice, x, margin, pre_lower >= 0, pre_lower, pre_upper)


@functools.partial(jax.jit, static_argnames=("arch", "layout", "alpha_steps", "attack_steps"))
def jitted_bound_domains(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array,
    y: jax.Array,
    splits: jax.Array,
    known_lower: jax.Array,
    known_upper: jax.Array,
    known_rows: jax.Array,
    *,
    layout: tuple[LayerSlot, ...],
    alpha_steps: int,
    attack_steps: int,
) -> DomainBounds:
    """:func:`bound_domains` at matmul precision "highest" (as :mod:`jaxcert.certify` bounds), jitted."""
    with jax.default_matmul_precision("highest"):
        return bound_domains(arch, params, lower, upper, C, y, splits, known_lower, known_upper, known_rows,
                             layout=layout, alpha_steps=alpha_steps, attack_steps=attack_steps)  # fmt: skip
