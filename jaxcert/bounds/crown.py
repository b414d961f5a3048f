"""CROWN / DeepPoly: back-substitution to the input for every ReLU layer's bounds, then for the output.

For each ReLU (in order) the bounds of its pre-activation ``z_i`` are obtained by back-substituting the
rows ``[I; -I]`` (one lower and one upper row per neuron) through the layers before it, relaxing the
earlier ReLUs with the lines of :mod:`jaxcert.bounds.relu_slopes`; then the output specification
(``C`` folded into the last Dense layer) is back-substituted once. See :mod:`jaxcert.bounds.backsub`
for the backward rules.

Only neurons that the forward interval (interval arithmetic from the previous ReLU's already tightened
bounds) leaves unstable, ``l < 0 < u``, get rows: a stable neuron's relaxation is exact (``y = x`` or
``y = 0``) whatever its bounds, so it keeps its interval bounds. An unstable neuron gets
``[max(l_CROWN, l), min(u_CROWN, u)]``; both are sound, so the intersection is. The first ReLU's bounds
are the interval ones when the layers before it contain at most one Dense/Conv layer (the others being
diagonal: Normalize, BatchNorm, Flatten), where interval arithmetic is exact. The output bounds are pure
CROWN (no intersection).

Cost and the options that cut it (all exact unless said otherwise):

    unstable_rows       (default "auto": True on layers of >= 1024 neurons) rows only for the unstable pairs of the
                        batch, ``unstable_chunk`` pairs at a time, chunks past the last one skipped at run
                        time (:mod:`jaxcert.bounds.pair_rows`): the pass costs the unstable pairs, not
                        the layer (an IBP-trained CNN3: 5 % of its second layer); False: every neuron
    unstable_budget=k   rows for at most k unstable neurons per example and layer (the widest;
                        :mod:`jaxcert.bounds.neuron_rows`); the others keep interval bounds: sound, looser
                        unless k covers every unstable neuron (then equal to full CROWN)
    patches             rows of convolutional neurons as windows of their receptive field
                        (:mod:`jaxcert.bounds.patches`): memory O(B · R · K² · C) instead of O(B · R · |h|)
    max_rows_bytes      rows back-substituted in lax.map chunks of at most this many bytes
                        (:mod:`jaxcert.bounds.row_chunks`)
    bound_upper=False   the output pass back-substitutes ``C`` only, not ``[C; -C]``; the upper bound is
                        then the interval one (what margins need: :func:`margin_lower_bounds` passes it)

Without them the ReLU layer ``i`` with ``N_i`` neurons costs one transposed pass of the layers before it
for ``2 N_i`` rows per example (e.g. CNN3 on 28×28: 2·1568 dense rows of size 14·14·16 after the second
ReLU, ~40 MB per example in float32; as 4×4×16 windows, 12× less). The affine layers directly below the
pre-activation are the same for every example, so their part of the pass is done once at batch 1.

Registered: "crown" and "deeppoly" (min-area slope), "crown-zero", "crown-one", "crown-parallel",
"crown-zero-c", "crown-one-c", "crown-soft" (option ``gamma``; the "-c" ramps take ``tau``), and
"crown-given" (option ``lower_slopes``: one array per ReLU layer, shaped like its pre-activation
(B, *neurons) or (*neurons), or one scalar for every neuron; registered default 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds.backsub import backsubstitute, neuron_rows, reject_options, split_two_sided, two_sided_rows
from jaxcert.bounds.ibp import add_intervals
from jaxcert.bounds.ibp import affine_interval as folded_interval
from jaxcert.bounds.layer_rules import UnsupportedLayerError, activation_indices, layer_kind, rule_for
from jaxcert.bounds.neuron_rows import check_budget, rows_needed, scatter_refined, select_unstable
from jaxcert.bounds.pair_rows import check_unstable_rows, scatter_pairs, unstable_pair_bounds
from jaxcert.bounds.patches import backsubstitute_windows, layer_windows, supports_windows, window_elements
from jaxcert.bounds.registry import CROWN_COST, RelaxationTraits, register
from jaxcert.bounds.relu_slopes import ReluLines, check_rule, check_rule_options
from jaxcert.bounds.relu_splits import clamp_to_split
from jaxcert.bounds.row_chunks import MAX_ROWS_BYTES, check_max_rows_bytes, map_row_chunks, rows_per_chunk
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.graph import plan_for, walk_forward
from jaxcert.nets.layers import Arch, LayerSpec, Params
from jaxcert.nets.network import LayerParams

Interval = tuple[jax.Array, jax.Array]
LineFn = Callable[[int, jax.Array, jax.Array], ReluLines]


def relu_indices(arch: Arch) -> list[int]:
    """Indices of the non-affine layers of ``arch``, each checked to have linear bounds (a "lines" rule,
    :mod:`jaxcert.bounds.layer_rules`; ReLU and LeakyReLU have one)."""
    return activation_indices(arch, "lines", "CROWN linear bounds")


def make_line_fn(
    arch: Arch,
    lower_slope: str = "adaptive",
    lower_slopes: Sequence[jax.Array] | float | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
) -> LineFn:
    """``line_fn(i, l, u)``: the relaxation of the ReLU at index ``i`` of ``arch`` under the given rule."""
    check_rule(lower_slope)
    check_rule_options(tau, gamma)
    relus = relu_indices(arch)
    given: dict[int, jax.Array | float] = {}
    if lower_slope == "given":
        if lower_slopes is None:
            raise ValueError("lower_slope='given' needs lower_slopes= (one array per ReLU layer, or a scalar)")
        if not isinstance(lower_slopes, list | tuple):
            if jnp.ndim(lower_slopes) != 0:
                raise ValueError("lower_slopes must be a list/tuple with one array per ReLU layer, or a scalar")
            lower_slopes = [lower_slopes] * len(relus)  # type: ignore[list-item]
        if len(lower_slopes) != len(relus):
            raise ValueError(f"lower_slopes: expected one array per ReLU layer ({len(relus)}), got {len(lower_slopes)}")
        given = dict(zip(relus, lower_slopes, strict=True))
    elif lower_slopes is not None:
        raise ValueError(f"lower_slopes= is only used with lower_slope='given', not {lower_slope!r}")

    rules = {i: rule_for(arch[i], "lines", "make_line_fn") for i in relus}

    def line_fn(i: int, lower: jax.Array, upper: jax.Array) -> ReluLines:
        return rules[i](lower, upper, lower_slope, slopes=given.get(i), tau=tau, gamma=gamma)

    return line_fn


def affine_interval(spec: LayerSpec, p: Params, lower: jax.Array, upper: jax.Array) -> Interval:
    """Interval of an affine layer's output: centre ``layer(c)``, radius ``|L| r``."""
    c, r = spec.apply(p, (upper + lower) / 2), spec.abs_linear(p, (upper - lower) / 2)
    return c - r, c + r


def _interval_is_exact(prefix: Arch) -> bool:
    """Interval arithmetic is exact for affine layers of which at most one mixes coordinates (no activation,
    no merge: :attr:`jaxcert.nets.graph.GraphPlan.exact_nodes`)."""
    plain = all(s.is_affine for s in prefix)
    return plain and sum(s.mixes for s in prefix) <= 1


def check_patches(arch: Arch, patches: bool | str) -> None:
    """``patches=True`` asks for windows, which do not pass ``Add`` merges: :class:`UnsupportedLayerError`
    on a net with one (``"auto"`` chooses dense rows there by itself)."""
    if patches is True:
        merge = next((s for s in arch if s.is_merge), None)
        if merge is not None:
            raise UnsupportedLayerError(layer_kind(merge), "window", "CROWN patches mode (use patches='auto' or False)")


def _window_geometry_fits(arch: Arch, in_shape: tuple[int, ...]) -> bool:
    """Windows pay when, on every layer, the receptive field is no larger than the layer itself."""
    return all(w.size <= max(shape[:2]) for shape, w in layer_windows(arch, in_shape))


def use_windows(arch: Arch, in_shape: tuple[int, ...], patches: bool | str) -> bool:
    """Whether the rows of the pre-activation ``arch(x)`` are carried back as windows (patches mode):
    ``True`` wherever the layers allow it, ``"auto"`` where the windows are also no larger than the layers."""
    if patches not in (True, False, "auto"):
        raise ValueError(f"patches must be True, False or 'auto', got {patches!r}")
    if patches is False:
        return False
    return supports_windows(arch, in_shape) and (patches is True or _window_geometry_fits(arch, in_shape))


def _window_rows(neurons: jax.Array | None, shape: tuple[int, ...], dtype: Any) -> tuple[jax.Array, ...]:
    """Rows ``[e_j; -e_j]`` of an HWC layer as 1×1 windows grouped by position (see :mod:`.patches`):
    every neuron (``neurons`` None; P = H·W positions of 2C rows) or the neurons ``neurons`` (B, n) (P = 2n
    positions of one row). Returns ``(A, a, h, w, split)``, ``split`` mapping the bounds to ``(lb, ub)``."""
    height, width, channels = shape
    if neurons is None:
        eye = jnp.eye(channels, dtype=dtype)
        A = jnp.concatenate([eye, -eye])[None, None, :, None, None, :]  # (1, 1, 2C, 1, 1, C)
        A = jnp.broadcast_to(A, (1, height * width, *A.shape[2:]))
        pos = jnp.arange(height * width)[None]
        flat = lambda t: t.reshape(t.shape[0], -1)
        split = lambda lbs: (flat(lbs[:, :, :channels]), -flat(lbs[:, :, channels:]))
        return A, jnp.zeros(A.shape[:3], dtype), pos // width, pos % width, split
    c, pos = neurons % channels, neurons // channels
    A = jax.nn.one_hot(c, channels, dtype=dtype)[:, :, None, None, None, :]
    twice = lambda t: jnp.concatenate([t, t], axis=1)
    A = jnp.concatenate([A, -A], axis=1)
    split = lambda lbs: split_two_sided(lbs[:, :, 0])
    return A, jnp.zeros(A.shape[:3], dtype), twice(pos // width), twice(pos % width), split


def neuron_bounds(
    arch: Arch,
    params: LayerParams,
    index: int,
    neurons: jax.Array | None,
    lines: Mapping[int, ReluLines],
    lower: jax.Array,
    upper: jax.Array,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
) -> tuple[jax.Array, jax.Array]:
    """CROWN bounds (B, n) of the neurons ``neurons`` (flat indices (B, n); ``None``: every neuron, in
    order) of the input of layer ``index``, relaxing the earlier ReLUs with ``lines``; the rows are
    back-substituted in chunks of at most ``max_rows_bytes`` (:mod:`jaxcert.bounds.row_chunks`)."""
    in_shape, batch, itemsize = lower.shape[1:], lower.shape[0], lower.dtype.itemsize
    shape = plan_for(arch, in_shape).shapes[index]
    if use_windows(arch[:index], in_shape, patches):
        A, a, h, w, split = _window_rows(neurons, shape, lower.dtype)
        per_position = batch * A.shape[2] * window_elements(arch[:index], in_shape) * itemsize
        chunk = rows_per_chunk(A.shape[1], per_position, max_rows_bytes)
        windows = lambda A, a, h, w: backsubstitute_windows(
            arch[:index], params[:index], A, a, h, w, lines, lower, upper
        )
        return split(map_row_chunks(windows, (A, a, h, w), chunk))
    start, A, a = neuron_rows(arch, params, index, in_shape, 1, lower.dtype)
    if neurons is not None:
        rows = jnp.concatenate([neurons, neurons + math.prod(shape)], axis=1)
        A, a = A[0][rows], a[0][rows]
    per_row = batch * max(math.prod(s) for s in plan_for(arch, in_shape).shapes[: start + 1]) * itemsize
    dense = lambda A, a: backsubstitute(arch[:start], params[:start], A, a, lines, lower, upper)
    return split_two_sided(map_row_chunks(dense, (A, a), rows_per_chunk(A.shape[1], per_row, max_rows_bytes)))


def crown_intermediate(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    line_fn: LineFn,
    *,
    intersect_ibp: bool = True,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    splits: Mapping[int, jax.Array] | None = None,
    known: Mapping[int, Interval] | None = None,
    unstable_rows: bool | str = "auto",
    unstable_chunk: int | None = None,
) -> tuple[dict[int, Interval], dict[int, ReluLines], Interval]:
    """Pre-activation bounds and relaxations of every ReLU of ``arch``, by CROWN (see the module doc), and
    the forward interval of the output of ``arch``.

    ``splits`` (branch and bound's hook): ``{i: split}`` for some ReLU indices ``i``, ``split`` shaped like
    the pre-activation (B, *neurons) with +1 (active: ``z ≥ 0``), -1 (inactive: ``z ≤ 0``) or 0 (free); each
    layer's bounds are clamped to its splits (:func:`jaxcert.bounds.relu_splits.clamp_to_split`) before its
    relaxation and the later layers use them. The bounds are then valid on the constrained sub-domain only.
    ``None`` (or all zeros) changes nothing.

    ``known`` (branch and bound's other hook): ``{i: (l', u')}`` bounds of some ReLU inputs already known to
    hold on the (sub-)domain, e.g. a parent domain's (valid on every child: a subset of its region); layer
    ``i``'s interval bounds become ``[max(l, l'), min(u, u')]`` before its CROWN refinement (so neurons known
    to be stable get no rows) and the split clamp, and the later layers use them. ``±inf`` entries change
    nothing.

    ``unstable_rows`` (without ``unstable_budget``): True gives rows to the unstable (example, neuron)
    pairs only, ``unstable_chunk`` pairs at a time, chunks past the unstable ones skipped
    (:mod:`jaxcert.bounds.pair_rows`); False gives every neuron of the layer its rows; both give the same
    bounds. "auto": :func:`use_pair_rows`. Under ``jax.vmap`` (GLS members) every pass is the whole-layer
    one (:func:`under_vmap`)."""
    check_budget(unstable_budget)
    check_unstable_rows(unstable_rows, unstable_chunk)
    check_max_rows_bytes(max_rows_bytes)
    check_patches(arch, patches)
    plan = plan_for(arch, lower.shape[1:])
    bounds: dict[int, Interval] = {}
    lines: dict[int, ReluLines] = {}
    batched = under_vmap((params, lower, upper))

    def step(i: int, spec: LayerSpec, interval: Interval) -> Interval:  # the forward interval of node i + 1
        lo, hi = interval
        if spec.is_affine:
            return affine_interval(spec, params[i], lo, hi)
        image = rule_for(spec, "interval", "crown_intermediate")
        if known is not None and i in known:
            lo, hi = jnp.maximum(lo, known[i][0]), jnp.minimum(hi, known[i][1])
        pair_rows = use_pair_rows(unstable_rows, lo[0].size) and not batched
        if i not in plan.exact_nodes and unstable_budget is None and pair_rows:
            windows = use_windows(arch[:i], lower.shape[1:], patches)
            pairs, z_lo, z_hi = unstable_pair_bounds(
                arch, params, i, lines, lower, upper, (lo, hi), windows=windows, unstable_chunk=unstable_chunk,
                max_rows_bytes=max_rows_bytes,
            )  # fmt: skip
            if intersect_ibp:
                at_pairs = lambda t: t.reshape(-1)[jnp.minimum(pairs, t.size - 1)]
                z_lo, z_hi = jnp.maximum(z_lo, at_pairs(lo)), jnp.minimum(z_hi, at_pairs(hi))
            lo, hi = scatter_pairs(lo, pairs, z_lo), scatter_pairs(hi, pairs, z_hi)
        elif i not in plan.exact_nodes:
            k = rows_needed(unstable_budget, math.prod(lo.shape[1:]))
            neurons = None if k is None else select_unstable(lo, hi, k)
            z_lo, z_hi = neuron_bounds(arch, params, i, neurons, lines, lower, upper, patches, max_rows_bytes)
            if intersect_ibp:
                pick = (lambda t: t.reshape(t.shape[0], -1)) if neurons is None else (lambda t: _take(t, neurons))
                z_lo, z_hi = jnp.maximum(z_lo, pick(lo)), jnp.minimum(z_hi, pick(hi))
            lo, hi = scatter_refined(lo, hi, neurons, z_lo, z_hi)
        if splits is not None and i in splits:
            lo, hi = clamp_to_split(lo, hi, splits[i])
        bounds[i], lines[i] = (lo, hi), line_fn(i, lo, hi)
        return image(lo, hi)

    out = walk_forward(arch, (lower, upper), step, add_intervals)
    return bounds, lines, out


#: "auto" gives rows to the unstable pairs only on layers of at least this many neurons per example. Below
#: it the whole-layer pass is cheap and the pair bookkeeping (nonzero, chunked loop, scatter) costs more:
#: mlp_14x14's 32-neuron layer, IBP-trained, batch 128: 10 ms whole-layer vs 16 ms pairs for the bounds,
#: 15 vs 33 ms with the gradient; CNN3's 1 568-neuron layer: pairs 7-11x faster (RESULTS.md, issue 19).
PAIR_ROWS_MIN_NEURONS = 1024


def under_vmap(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is traced by ``jax.vmap`` (a batching tracer anywhere in its chain of
    tracers: under ``vmap(grad(...))`` a linearize tracer wraps it).

    The intermediate passes then take the whole-layer pass (same bounds), whatever ``unstable_rows`` says:
    under ``vmap`` the pair pass's skip is a select that runs every chunk (no gain), and ``vmap`` of its
    value-and-gradient crashes XLA:CPU (a segmentation fault, CNN3, JAX 0.10; ``lax.map`` of it and
    ``vmap`` of its value alone run)."""
    from jax._src.interpreters.batching import BatchTracer

    for leaf in jax.tree.leaves(tree):
        while isinstance(leaf, jax.core.Tracer):
            if isinstance(leaf, BatchTracer):
                return True
            leaf = getattr(leaf, "primal", getattr(leaf, "val", None))
    return False


def use_pair_rows(unstable_rows: bool | str, neurons: int) -> bool:
    """Whether the intermediate pass of a layer of ``neurons`` neurons (per example) gives rows to the
    unstable pairs only (:mod:`.pair_rows`): always for True, never for False, and for "auto" on layers
    of at least :data:`PAIR_ROWS_MIN_NEURONS` neurons."""
    return unstable_rows is True or (unstable_rows == "auto" and neurons >= PAIR_ROWS_MIN_NEURONS)


def _take(t: jax.Array, neurons: jax.Array) -> jax.Array:
    return jnp.take_along_axis(t.reshape(t.shape[0], -1), neurons, axis=1)


def crown_preactivation_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    *,
    lower_slope: str = "adaptive",
    lower_slopes: Sequence[jax.Array] | float | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
    intersect_ibp: bool = True,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    unstable_rows: bool | str = "auto",
    unstable_chunk: int | None = None,
) -> list[Interval]:
    """CROWN bounds ``(l, u)`` of the input of every ReLU of ``arch`` (in order), each (B, *shape)."""
    line_fn = make_line_fn(arch, lower_slope, lower_slopes, tau, gamma)
    bounds, _, _ = crown_intermediate(
        arch, params, lower, upper, line_fn, intersect_ibp=intersect_ibp, unstable_budget=unstable_budget,
        patches=patches, max_rows_bytes=max_rows_bytes, unstable_rows=unstable_rows, unstable_chunk=unstable_chunk,
    )  # fmt: skip
    return [bounds[i] for i in sorted(bounds)]


def output_rows(
    W: jax.Array, b: jax.Array, bound_upper: bool, body_interval: Interval
) -> tuple[jax.Array, jax.Array, Any]:
    """Rows to back-substitute for the folded final layer ``(W, b)`` and a function from their lower
    bounds to ``(lb, ub)``: ``[W; -W]`` if ``bound_upper``, else ``W`` alone with the interval upper bound
    of the output (from ``body_interval``, sound and nearly free): half the rows, for margins."""
    if bound_upper:
        A, a = two_sided_rows(W, b)
        return A, a, split_two_sided
    _, ub = folded_interval(*body_interval, W, b)
    return jnp.swapaxes(W, 1, 2), b, lambda lbs: (lbs, ub)


def check_bound_upper(bound_upper: Any) -> None:
    if not isinstance(bound_upper, bool):
        raise ValueError(f"bound_upper must be True or False, got {bound_upper!r}")


def crown_with_intermediate(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    *,
    lower_slope: str = "adaptive",
    lower_slopes: Sequence[jax.Array] | float | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
    intersect_ibp: bool = True,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    bound_upper: bool = True,
    unstable_rows: bool | str = "auto",
    unstable_chunk: int | None = None,
) -> tuple[jax.Array, jax.Array, list[Interval]]:
    """``(lb, ub, intermediate)``: CROWN bounds of ``C f(x)`` and the pre-activation bounds of every ReLU
    (in order, each (B, *shape)) that they were computed with."""
    check_bound_upper(bound_upper)
    line_fn = make_line_fn(arch, lower_slope, lower_slopes, tau, gamma)
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])
    bounds, lines, out = crown_intermediate(
        body, body_params, lower, upper, line_fn, intersect_ibp=intersect_ibp, unstable_budget=unstable_budget,
        patches=patches, max_rows_bytes=max_rows_bytes, unstable_rows=unstable_rows, unstable_chunk=unstable_chunk,
    )  # fmt: skip
    A, a, finish = output_rows(W, b, bound_upper, out)
    lb, ub = finish(backsubstitute(body, body_params, A, a, lines, lower, upper))
    return lb, ub, [bounds[i] for i in sorted(bounds)]


def crown_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    *,
    lower_slope: str = "adaptive",
    lower_slopes: Sequence[jax.Array] | float | None = None,
    tau: float | jax.Array = 0.1,
    gamma: float | jax.Array = 1.0,
    intersect_ibp: bool = True,
    unstable_budget: int | None = None,
    patches: bool | str = "auto",
    max_rows_bytes: int = MAX_ROWS_BYTES,
    bound_upper: bool = True,
    unstable_rows: bool | str = "auto",
    unstable_chunk: int | None = None,
    **unknown: Any,
) -> tuple[jax.Array, jax.Array]:
    """CROWN / DeepPoly bounds ``(lb, ub)`` of ``C f(x)`` over ``[lower, upper]``, shape (B, K).

    ``lower_slope`` picks the rule of :mod:`jaxcert.bounds.relu_slopes` for every ReLU (intermediate
    and output passes); ``lower_slopes`` are the slopes of the "given" rule. ``unstable_budget``
    (rows per example and layer, see :mod:`jaxcert.bounds.neuron_rows`), ``patches`` (windows for
    convolutional layers, :mod:`jaxcert.bounds.patches`) and ``bound_upper`` (False: the upper bound is
    the interval one, half the work) trade tightness or nothing for cost, see the module doc.
    """
    reject_options(unknown, "crown")
    lb, ub, _ = crown_with_intermediate(
        arch, params, lower, upper, C, lower_slope=lower_slope, lower_slopes=lower_slopes, tau=tau, gamma=gamma,
        intersect_ibp=intersect_ibp, unstable_budget=unstable_budget, patches=patches,
        max_rows_bytes=max_rows_bytes, bound_upper=bound_upper, unstable_rows=unstable_rows,
        unstable_chunk=unstable_chunk,
    )  # fmt: skip
    return lb, ub


#: CROWN/DeepPoly and its slope variants: one backward pass per ReLU layer, lower bounds only on demand.
_CROWN = RelaxationTraits(cost=CROWN_COST, one_sided=True)
register("crown", crown_bounds, traits=_CROWN, lower_slope="adaptive")
register("deeppoly", crown_bounds, traits=_CROWN, lower_slope="adaptive")
register("crown-zero", crown_bounds, traits=_CROWN, lower_slope="zero")
register("crown-one", crown_bounds, traits=_CROWN, lower_slope="one")
register("crown-parallel", crown_bounds, traits=_CROWN, lower_slope="parallel")
register("crown-zero-c", crown_bounds, traits=_CROWN, lower_slope="zero-c")
register("crown-one-c", crown_bounds, traits=_CROWN, lower_slope="one-c")
register("crown-soft", crown_bounds, traits=_CROWN, lower_slope="soft")
#: Without ``lower_slopes=`` "crown-given" uses the slope 1/2 for every crossing neuron.
register("crown-given", crown_bounds, traits=_CROWN, lower_slope="given", lower_slopes=0.5)
