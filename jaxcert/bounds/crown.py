"""CROWN / DeepPoly: back-substitution to the input for every ReLU layer's bounds, then for the output.

For each ReLU (in order) the bounds of its pre-activation ``z_i`` are obtained by back-substituting the
rows ``[I; -I]`` (one lower and one upper row per neuron) through the layers before it, relaxing the
earlier ReLUs with the lines of :mod:`jaxcert.bounds.relu_slopes`; then the output specification
(``C`` folded into the last Dense layer) is back-substituted once. See :mod:`jaxcert.bounds.backsub`
for the backward rules.

Intermediate bounds are intersected with interval bounds propagated forward from the previous ReLU's
(already tightened) bounds, ``[max(l_CROWN, l_IBP), min(u_CROWN, u_IBP)]``; both are sound, so the
intersection is. The first ReLU's bounds are taken from IBP directly when the layers before it contain
at most one Dense/Conv layer (the others being diagonal: Normalize, BatchNorm, Flatten), where interval
arithmetic is exact. The output bounds are pure CROWN (no intersection).

Complexity: the ReLU layer ``i`` with ``N_i`` neurons costs one transposed pass of the layers before
it for ``2 N_i`` rows per example: time ``O(B · Σ_i 2 N_i · cost(layers < i))``, memory
``O(B · 2 N_i · max_{k<i} |h_k|)``. The affine layers directly below the pre-activation are the same
for every example, so their part of the pass is done once and broadcast over the batch
(:func:`jaxcert.bounds.backsub.neuron_rows`). On conv nets the remaining cost still dominates (e.g.
CNN3 on 28×28: 2·1568 rows of size 14·14·16 after the second ReLU, ~40 MB per example in float32);
CROWN-IBP avoids it (only ``2K`` rows for the K outputs).

Registered: "crown" and "deeppoly" (min-area slope), "crown-zero", "crown-one", "crown-parallel",
"crown-zero-c", "crown-one-c", "crown-soft" (option ``gamma``; the "-c" ramps take ``tau``), and
"crown-given" (option ``lower_slopes``: one array per ReLU layer, shaped like its pre-activation
(B, *neurons) or (*neurons), or one scalar for every neuron; registered default 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds.backsub import backsubstitute, neuron_rows, reject_options, split_two_sided, two_sided_rows
from jaxcert.bounds.registry import register
from jaxcert.bounds.relu_slopes import ReluLines, check_rule, check_rule_options, relu_lines
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.layers import Arch, Conv, Dense, LayerSpec, Params
from jaxcert.nets.network import LayerParams

Interval = tuple[jax.Array, jax.Array]
LineFn = Callable[[int, jax.Array, jax.Array], ReluLines]


def relu_indices(arch: Arch) -> list[int]:
    """Indices of the ReLU layers of ``arch``."""
    return [i for i, spec in enumerate(arch) if not spec.is_affine]


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

    def line_fn(i: int, lower: jax.Array, upper: jax.Array) -> ReluLines:
        return relu_lines(lower, upper, lower_slope, slopes=given.get(i), tau=tau, gamma=gamma)

    return line_fn


def affine_interval(spec: LayerSpec, p: Params, lower: jax.Array, upper: jax.Array) -> Interval:
    """Interval of an affine layer's output: centre ``layer(c)``, radius ``|L| r``."""
    c, r = spec.apply(p, (upper + lower) / 2), spec.abs_linear(p, (upper - lower) / 2)
    return c - r, c + r


def _interval_is_exact(prefix: Arch) -> bool:
    """Interval arithmetic is exact for affine layers of which at most one mixes coordinates."""
    return all(s.is_affine for s in prefix) and sum(isinstance(s, Dense | Conv) for s in prefix) <= 1


def crown_intermediate(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    line_fn: LineFn,
    *,
    intersect_ibp: bool = True,
) -> tuple[dict[int, Interval], dict[int, ReluLines]]:
    """Pre-activation bounds and relaxations of every ReLU of ``arch``, by CROWN (see the module doc)."""
    batch = lower.shape[0]
    bounds: dict[int, Interval] = {}
    lines: dict[int, ReluLines] = {}
    lo, hi = lower, upper  # forward interval of the current layer output
    for i, spec in enumerate(arch):
        if spec.is_affine:
            lo, hi = affine_interval(spec, params[i], lo, hi)
            continue
        if _interval_is_exact(arch[:i]):
            z_lo, z_hi = lo, hi
        else:
            start, A, a = neuron_rows(arch, params, i, lower.shape[1:], batch, lower.dtype)
            z_lo, z_hi = split_two_sided(backsubstitute(arch[:start], params[:start], A, a, lines, lower, upper))
            z_lo, z_hi = z_lo.reshape(lo.shape), z_hi.reshape(hi.shape)
            if intersect_ibp:
                z_lo, z_hi = jnp.maximum(z_lo, lo), jnp.minimum(z_hi, hi)
        bounds[i], lines[i] = (z_lo, z_hi), line_fn(i, z_lo, z_hi)
        lo, hi = jax.nn.relu(z_lo), jax.nn.relu(z_hi)
    return bounds, lines


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
) -> list[Interval]:
    """CROWN bounds ``(l, u)`` of the input of every ReLU of ``arch`` (in order), each (B, *shape)."""
    line_fn = make_line_fn(arch, lower_slope, lower_slopes, tau, gamma)
    bounds, _ = crown_intermediate(arch, params, lower, upper, line_fn, intersect_ibp=intersect_ibp)
    return [bounds[i] for i in sorted(bounds)]


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
) -> tuple[jax.Array, jax.Array, list[Interval]]:
    """``(lb, ub, intermediate)``: CROWN bounds of ``C f(x)`` and the pre-activation bounds of every ReLU
    (in order, each (B, *shape)) that they were computed with."""
    line_fn = make_line_fn(arch, lower_slope, lower_slopes, tau, gamma)
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])
    bounds, lines = crown_intermediate(body, body_params, lower, upper, line_fn, intersect_ibp=intersect_ibp)
    A, a = two_sided_rows(W, b)
    lb, ub = split_two_sided(backsubstitute(body, body_params, A, a, lines, lower, upper))
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
    **unknown: Any,
) -> tuple[jax.Array, jax.Array]:
    """CROWN / DeepPoly bounds ``(lb, ub)`` of ``C f(x)`` over ``[lower, upper]``, shape (B, K).

    ``lower_slope`` picks the rule of :mod:`jaxcert.bounds.relu_slopes` for every ReLU (intermediate
    and output passes); ``lower_slopes`` are the slopes of the "given" rule.
    """
    reject_options(unknown, "crown")
    lb, ub, _ = crown_with_intermediate(
        arch,
        params,
        lower,
        upper,
        C,
        lower_slope=lower_slope,
        lower_slopes=lower_slopes,
        tau=tau,
        gamma=gamma,
        intersect_ibp=intersect_ibp,
    )
    return lb, ub


register("crown", crown_bounds, lower_slope="adaptive")
register("deeppoly", crown_bounds, lower_slope="adaptive")
register("crown-zero", crown_bounds, lower_slope="zero")
register("crown-one", crown_bounds, lower_slope="one")
register("crown-parallel", crown_bounds, lower_slope="parallel")
register("crown-zero-c", crown_bounds, lower_slope="zero-c")
register("crown-one-c", crown_bounds, lower_slope="one-c")
register("crown-soft", crown_bounds, lower_slope="soft")
#: Without ``lower_slopes=`` "crown-given" uses the slope 1/2 for every crossing neuron.
register("crown-given", crown_bounds, lower_slope="given", lower_slopes=0.5)
