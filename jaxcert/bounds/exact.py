"""Exact (MILP) and triangle-LP references for tiny networks, one example at a time, via scipy's HiGHS.

The network is first turned into dense affine blocks between ReLUs (Conv, Normalize, BatchNorm,
AvgPool and Flatten layers become matrices: the Jacobian of each block's linear part, i.e. the linear
part applied to the unit vectors, and the block at 0 as offset):

    z_1 = W_1 x + b_1,   h_k = ReLU(z_k),   z_{k+1} = W_{k+1} h_k + b_{k+1},   out = C (W_L h + b_L).

With residual merges (``Add``, a linear equality ``y = x + x_j``) a pre-activation may read several
earlier values: in general ``z_{k+1} = Σ_{g ≤ k} W_{k+1,g} h_g + b_{k+1}`` with ``h_0 = x``, one matrix per
value it depends on (:func:`graph_blocks`; a chain has one, the previous ReLU's output).

Both problems minimise (and maximise) every row of ``C out`` over the box ``lower ≤ x ≤ upper`` with
the pre-activation bounds ``l ≤ z_k ≤ u``. Stable neurons are exact (``h = z`` if ``l ≥ 0``, ``h = 0`` if
``u ≤ 0``); a crossing neuron (``l < 0 < u``) is encoded

    MILP (big-M, exact):  h ≥ 0,  h ≥ z,  h ≤ u δ,  h ≤ z - l (1 - δ),  δ ∈ {0, 1}
    LP (triangle/planet): h ≥ 0,  h ≥ z,  (u - l) h ≤ u (z - l)

The MILP value is the exact range for any valid ``[l, u]``; by default these come from interval
arithmetic on the dense blocks (float64); given ones are widened by ``WIDEN`` (relative 1e-6) so that
float32 rounding cannot cut off feasible points. The LP is the convex relaxation that CROWN-type bounds with
the same pre-activation bounds are feasible duals of, so it is at least as tight as them.

Everything here is numpy/scipy on concrete values (not jittable); it is a reference for tests and
analysis. Networks with more than ``max_neurons`` ReLUs are refused.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array, csr_array

from jaxcert.bounds.layer_rules import UnsupportedLayerError, layer_kind, rule_for
from jaxcert.nets.graph import walk_forward
from jaxcert.nets.layers import Arch, LayerSpec
from jaxcert.nets.network import LayerParams, check_params, shapes

#: Default limit on the number of ReLU neurons of a network given to the exact references.
MAX_NEURONS = 300

#: Given pre-activation bounds are widened by this relative amount, to absorb float32 rounding.
WIDEN = 1e-6

Block = tuple[np.ndarray, np.ndarray]  # (W (n_out, n_in), b (n_out,))
#: ``({g: W_g (n_out, n_g)}, b (n_out,))``: ``Σ_g W_g h_g + b``, value ``g`` = the input (0) or the g-th ReLU's output
GraphBlock = tuple[dict[int, np.ndarray], np.ndarray]
#: An affine expression of a node: ``{g: M_g (n_g, *shape)}`` (the linear part applied to value g's unit
#: vectors) and the constant (1, *shape)
_Expression = tuple[dict[int, jax.Array], jax.Array]


@functools.partial(jax.jit, static_argnums=0)
def _affine_step(spec: LayerSpec, p: dict, expression: _Expression) -> _Expression:
    """The expression of a node after the affine layer ``spec``: the linear part on every matrix, the layer
    itself on the constant."""
    terms, b = expression
    return {g: spec.linear(p, M) for g, M in terms.items()}, spec.apply(p, b)


def _add_expressions(a: _Expression, b: _Expression) -> _Expression:
    terms = dict(a[0])
    for g, M in b[0].items():
        terms[g] = terms[g] + M if g in terms else M
    return terms, a[1] + b[1]


def _unit_expression(group: int, shape: tuple[int, ...]) -> _Expression:
    n = math.prod(shape)
    return {group: jnp.eye(n, dtype=jnp.float32).reshape(n, *shape)}, jnp.zeros((1, *shape), jnp.float32)


def _as_block(expression: _Expression) -> GraphBlock:
    terms, b = expression
    dense = {g: np.asarray(M.reshape(M.shape[0], -1).T, np.float64) for g, M in terms.items()}
    return dense, np.asarray(b, np.float64).reshape(-1)


def graph_blocks(arch: Arch, params: LayerParams, in_shape: Sequence[int]) -> list[GraphBlock]:
    """Every ReLU's pre-activation and the output as ``Σ_g W_g h_g + b`` over the input (``g = 0``) and the
    outputs of earlier ReLUs (``g = k`` for the k-th), float64: ``len(ReLUs) + 1`` blocks. The graph's
    ``Add`` merges sum expressions (a linear equality), so a block may read several values."""
    check_params(arch, params)
    blocks: list[GraphBlock] = []

    def step(i: int, spec: LayerSpec, expression: _Expression) -> _Expression:
        if spec.is_affine:
            return _affine_step(spec, params[i], expression)
        _check_encoding(spec)
        blocks.append(_as_block(expression))
        return _unit_expression(len(blocks), expression[1].shape[1:])

    shapes(arch, tuple(in_shape))  # checks the graph (shortcut sources and shapes)
    blocks.append(_as_block(walk_forward(arch, _unit_expression(0, tuple(in_shape)), step, _add_expressions)))
    return blocks


def _check_encoding(spec: LayerSpec) -> bool:
    """True if the non-affine ``spec`` has the MILP/LP encoding built here (its "milp" rule is "relu":
    ``h ≥ z``, big-M or triangle upper constraints); :class:`UnsupportedLayerError` otherwise."""
    encoding = rule_for(spec, "milp", "exact")
    if encoding != "relu":
        raise UnsupportedLayerError(layer_kind(spec), "milp", f"exact (no {encoding!r} encoding)")
    return True


def dense_blocks(arch: Arch, params: LayerParams, in_shape: Sequence[int]) -> list[Block]:
    """The affine blocks between ReLUs of a chain (no ``Add``) as dense float64 ``(W, b)``: ``len(ReLUs) + 1``
    blocks, block ``k`` reading the previous ReLU's output (the input for the first); with merges, a block
    may read several values: see :func:`graph_blocks`."""
    if any(spec.is_merge for spec in arch):
        raise ValueError("dense_blocks: the network has Add merges, whose blocks read several values; use graph_blocks")
    return [(terms[k], b) for k, (terms, b) in enumerate(graph_blocks(arch, params, in_shape))]


def _affine_interval(terms: dict[int, np.ndarray], b: np.ndarray, values: list) -> tuple[np.ndarray, np.ndarray]:
    c = sum(W @ ((values[g][1] + values[g][0]) / 2) for g, W in terms.items()) + b
    r = sum(np.abs(W) @ ((values[g][1] - values[g][0]) / 2) for g, W in terms.items())
    return c - r, c + r


def interval_bounds(
    blocks: list[GraphBlock], lower: np.ndarray, upper: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Float64 interval bounds of every pre-activation ``z_k`` (one pair per ReLU block)."""
    out, values = [], [(lower, upper)]
    for terms, b in blocks[:-1]:
        out.append(_affine_interval(terms, b, values))
        values.append((np.maximum(out[-1][0], 0.0), np.maximum(out[-1][1], 0.0)))
    return out


class _Program:
    """Variables ``[x, h_1, δ_1, h_2, δ_2, ...]`` and the ReLU constraints of one example."""

    def __init__(self, blocks: list[GraphBlock], lower: np.ndarray, upper: np.ndarray, pre: list, integral: bool):
        self.rows: list[tuple[dict[int, np.ndarray], float, float]] = []
        n0 = lower.size
        self.lb, self.ub, self.integrality = list(lower), list(upper), [0] * n0
        self.values = [np.arange(n0)]  # variable indices of the input and of every ReLU's output
        for (terms, b), (z_lo, z_hi) in zip(blocks[:-1], pre, strict=True):
            n = b.size
            h = np.arange(len(self.lb), len(self.lb) + n)
            d = h + n
            self.lb += list(np.maximum(z_lo, 0.0)) + [0.0] * n
            self.ub += list(np.maximum(z_hi, 0.0)) + [1.0] * n
            self.integrality += [0] * n + [1 if integral else 0] * n
            prev = np.concatenate([self.values[g] for g in terms])
            W = np.concatenate(list(terms.values()), axis=1)
            for j in range(n):
                self._relu(W[j], b[j], float(z_lo[j]), float(z_hi[j]), prev, int(h[j]), int(d[j]), integral)
            self.values.append(h)
        self.n = len(self.lb)

    def cost(self, terms: dict[int, np.ndarray], row: np.ndarray) -> np.ndarray:
        """The cost vector of ``row · (Σ_g W_g h_g)`` over the program's variables."""
        cost = np.zeros(self.n)
        for g, W in terms.items():
            np.add.at(cost, self.values[g], W.T @ row)
        return cost

    def _add(self, coefs: dict[int, float] | list, lo: float, hi: float) -> None:
        self.rows.append((coefs, lo, hi))

    def _relu(
        self, w: np.ndarray, b: float, lo: float, hi: float, prev: np.ndarray, h: int, d: int, integral: bool
    ) -> None:
        """Constraints of ``h = ReLU(z)``, ``z = w·prev + b ∈ [lo, hi]``; ``d`` is the neuron's binary."""
        z = [(int(i), -float(c)) for i, c in zip(prev, w, strict=True) if c != 0.0]  # -w·prev
        if hi <= 0:  # inactive: h = 0 (set by the variable bounds)
            self.ub[h] = 0.0
            self.ub[d] = 0.0
        elif lo >= 0:  # active: h = z
            self._add([(h, 1.0), *z], b, b)
            self.ub[d] = 0.0
        else:
            self._add([(h, 1.0), *z], b, np.inf)  # h ≥ z
            if integral:
                self._add([(h, 1.0), (d, -hi)], -np.inf, 0.0)  # h ≤ u δ
                self._add([(h, 1.0), *z, (d, -lo)], -np.inf, b - lo)  # h ≤ z - l (1 - δ)
            else:
                self.ub[d] = 0.0
                scaled = [(i, hi * c) for i, c in z]
                self._add([(h, hi - lo), *scaled], -np.inf, hi * (b - lo))  # (u - l) h ≤ u (z - l)

    def constraint(self) -> LinearConstraint | None:
        if not self.rows:
            return None
        r, c, v, lo, hi = [], [], [], [], []
        for k, (coefs, a, bnd) in enumerate(self.rows):
            for i, val in coefs:
                r.append(k)
                c.append(i)
                v.append(val)
            lo.append(a)
            hi.append(bnd)
        A = csr_array(coo_array((v, (r, c)), shape=(len(self.rows), self.n)))
        return LinearConstraint(A, lo, hi)

    def minimise(self, cost: np.ndarray, constraint: LinearConstraint | None) -> float:
        res = milp(
            cost,
            constraints=[constraint] if constraint is not None else [],
            integrality=np.asarray(self.integrality),
            bounds=Bounds(np.asarray(self.lb), np.asarray(self.ub)),
            options={"mip_rel_gap": 1e-9, "presolve": True},
        )
        if res.status != 0 or res.fun is None:
            raise RuntimeError(f"HiGHS failed: {res.message}")
        return float(res.fun)


def _as_numpy_pre(intermediate: Sequence, b: int, blocks: list[Block]) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(intermediate) != len(blocks) - 1:
        raise ValueError(
            f"intermediate: expected one (lower, upper) pair per ReLU layer ({len(blocks) - 1}), "
            f"got {len(intermediate)}"
        )
    out = []
    for k, (z_lo, z_hi) in enumerate(intermediate):
        z_lo, z_hi = np.asarray(z_lo, np.float64)[b].reshape(-1), np.asarray(z_hi, np.float64)[b].reshape(-1)
        if z_lo.size != blocks[k][1].size:
            raise ValueError(
                f"intermediate[{k}] has {z_lo.size} neurons per example, the layer has {blocks[k][1].size}"
            )
        if np.any(z_lo > z_hi + WIDEN * (1 + np.abs(z_hi))):
            raise ValueError(f"intermediate[{k}]: some lower bounds exceed the upper bounds")
        out.append((z_lo - WIDEN * (1 + np.abs(z_lo)), z_hi + WIDEN * (1 + np.abs(z_hi))))
    return out


def _solve(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None,
    intermediate: Sequence | None,
    integral: bool,
    max_neurons: int,
) -> tuple[np.ndarray, np.ndarray]:
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    if lower.shape != upper.shape or lower.ndim < 2:
        raise ValueError(f"lower/upper must have the same shape (batch, *input), got {lower.shape}, {upper.shape}")
    blocks = graph_blocks(arch, params, lower.shape[1:])
    neurons = sum(b.size for _, b in blocks[:-1])
    if neurons > max_neurons:
        raise ValueError(
            f"network too large for the exact reference: {neurons} ReLU neurons > max_neurons={max_neurons}"
        )
    W_last, b_last = blocks[-1]
    batch = lower.shape[0]
    specs = np.broadcast_to(np.eye(b_last.size), (batch, b_last.size, b_last.size)) if C is None else np.asarray(C)
    if specs.ndim != 3 or specs.shape[0] != batch or specs.shape[2] != b_last.size:
        raise ValueError(f"C must have shape (batch={batch}, K, outputs={b_last.size}), got {specs.shape}")
    lbs = np.zeros(specs.shape[:2])
    ubs = np.zeros(specs.shape[:2])
    for e in range(batch):
        lo, hi = lower[e].reshape(-1), upper[e].reshape(-1)
        pre = interval_bounds(blocks, lo, hi) if intermediate is None else _as_numpy_pre(intermediate, e, blocks)
        program = _Program(blocks, lo, hi, pre, integral)
        constraint = program.constraint()
        for k, row in enumerate(specs[e].astype(np.float64)):
            cost, offset = program.cost(W_last, row), float(row @ b_last)
            lbs[e, k] = program.minimise(cost, constraint) + offset
            ubs[e, k] = -program.minimise(-cost, constraint) + offset
    return lbs, ubs


def exact_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    *,
    intermediate: Sequence | None = None,
    max_neurons: int = MAX_NEURONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(min, max)`` of every row of ``C f(x)`` over the box, by MILP; numpy arrays (B, K).

    ``intermediate`` optionally gives valid pre-activation bounds ``[(l, u), ...]`` (one pair per ReLU
    layer, each (B, *shape)) for the big-M constants; by default interval arithmetic is used.
    """
    return _solve(arch, params, lower, upper, C, intermediate, True, max_neurons)


def lp_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    *,
    intermediate: Sequence | None = None,
    max_neurons: int = MAX_NEURONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Triangle-LP bounds of every row of ``C f(x)`` given pre-activation bounds; numpy arrays (B, K).

    ``intermediate``: ``[(l, u), ...]`` one pair per ReLU layer, each (B, *shape) (e.g. the bounds a
    CROWN variant used); by default interval arithmetic on the dense blocks.
    """
    return _solve(arch, params, lower, upper, C, intermediate, False, max_neurons)


class MarginCheck(NamedTuple):
    """Outcome of :func:`exact_margin_check` for one example.

    ``status``: ``"verified"`` (every margin row's exact minimum is > 0), ``"violated"`` (a row's minimum is
    ≤ 0; ``x`` is the minimiser found, to be checked by a forward pass), or ``"timeout"``. ``lower`` is
    the exact minimum over the rows when solved, else ``nan``."""

    status: str
    lower: float
    x: np.ndarray | None


def exact_margin_check(
    arch: Arch,
    params: LayerParams,
    lower: np.ndarray,
    upper: np.ndarray,
    C: np.ndarray,
    *,
    time_limit: float = 10.0,
    intermediate: Sequence | None = None,
    max_neurons: int = MAX_NEURONS,
) -> MarginCheck:
    """Is ``min_x C f(x) > 0`` row by row over the box ``[lower, upper]`` (one example, no batch axis)?

    Solves the MILP of :func:`exact_bounds` for each row of ``C`` (K, outputs) within ``time_limit``
    seconds in all; stops at the first row whose minimum (or a feasible point found before the time
    limit) is ≤ 0 and returns that point: since the MILP encodes the network exactly, it is a
    counterexample up to float rounding (check it with a forward pass). ``intermediate``: valid
    pre-activation bounds ``[(l, u), ...]`` (each (1, *shape), e.g. CROWN's) intersected with interval
    arithmetic for tighter big-M constants."""
    in_shape = tuple(np.shape(lower))
    lo, hi = np.asarray(lower, np.float64).reshape(-1), np.asarray(upper, np.float64).reshape(-1)
    blocks = graph_blocks(arch, params, in_shape)
    neurons = sum(b.size for _, b in blocks[:-1])
    if neurons > max_neurons:
        raise ValueError(f"network too large for the exact MILP: {neurons} ReLU neurons > max_neurons={max_neurons}")
    pre = interval_bounds(blocks, lo, hi)
    if intermediate is not None:
        given = _as_numpy_pre(intermediate, 0, blocks)
        pre = [(np.maximum(a, c), np.minimum(b, d)) for (a, b), (c, d) in zip(pre, given, strict=True)]
    program = _Program(blocks, lo, hi, pre, True)
    constraint = program.constraint()
    W_last, b_last = blocks[-1]
    start = time.monotonic()
    worst = np.inf
    for row in np.asarray(C, np.float64):
        left = time_limit - (time.monotonic() - start)
        if left <= 0:
            return MarginCheck("timeout", float("nan"), None)
        cost = program.cost(W_last, row)
        res = milp(
            cost,
            constraints=[constraint] if constraint is not None else [],
            integrality=np.asarray(program.integrality),
            bounds=Bounds(np.asarray(program.lb), np.asarray(program.ub)),
            options={"mip_rel_gap": 1e-9, "presolve": True, "time_limit": left},
        )
        offset = float(row @ b_last)
        found = res.x is not None and res.fun is not None
        if found and res.fun + offset <= 0:
            return MarginCheck("violated", float(res.fun + offset), np.asarray(res.x[: lo.size]).reshape(in_shape))
        if res.status != 0:
            if res.status == 1:  # time (or iteration) limit before optimality
                return MarginCheck("timeout", float("nan"), None)
            raise RuntimeError(f"HiGHS failed: {res.message}")
        worst = min(worst, float(res.fun + offset))
    return MarginCheck("verified", worst, None)
