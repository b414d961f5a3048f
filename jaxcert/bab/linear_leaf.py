"""The exact bound of a leaf domain where no neuron crosses: an LP over the input polytope.

When every neuron of a domain is split or stable under its bounds, the network is affine on the domain
(each ReLU multiplies by its phase ``m ∈ {0, 1}``), so every margin row and every split neuron's
pre-activation are affine in the input, ``C f(x) = G x + g`` and ``z_j = a_j·x + b_j``. Fixing the
intermediate bounds (:mod:`jaxcert.bounds.relu_splits`) cannot enforce the splits' constraints in the
back-substitution (the box minimiser may violate them; β-CROWN's multipliers would), but the exact
minimum over the domain is the linear program (HiGHS, float64)

    min_x  G_k x + g_k    s.t.  lower ≤ x ≤ upper,   s_j (a_j·x + b_j) ≥ 0  for every split neuron j

(``s_j = ±1`` its split; stable neurons need no constraint: their bounds hold on the domain). Infeasible:
the domain is empty. A row's minimum ≤ ``TOL`` leaves its minimiser as a candidate counterexample, which
:mod:`.search` checks by a forward pass; a minimum > ``TOL`` for every row closes the domain.
``G, g, a, b`` are the Jacobian and value at 0 of the phase-fixed network (``jax.jacfwd``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linprog

from jaxcert.bab.layout import LayerSlot
from jaxcert.nets.graph import walk_forward
from jaxcert.nets.layers import Arch, LayerSpec
from jaxcert.nets.network import LayerParams

#: A leaf counts as verified only if every row's LP minimum exceeds this (float32 network, float64 LP).
TOL = 1e-5


class LeafBound(NamedTuple):
    """``status`` "empty", "verified" or "open" (some row's minimum ≤ TOL; ``x`` its minimiser)."""

    status: str
    lower: float
    x: np.ndarray | None


@functools.partial(jax.jit, static_argnums=0)
def affine_pieces(arch: Arch, params: LayerParams, phases: dict[int, jax.Array], x0: jax.Array) -> tuple:
    """``((f(x0), z(x0)), (∂f/∂x, ∂z/∂x))`` of the phase-fixed network (each ReLU ``i`` replaced by
    ``phases[i] ⊙ ·``), ``z`` the pre-activations of every ReLU, flattened and concatenated."""

    def run(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        pre: list[jax.Array] = []

        def step(i: int, spec: LayerSpec, h: jax.Array) -> jax.Array:
            if spec.is_affine:
                return spec.apply(params[i], h)
            pre.append(h.reshape(-1))
            return h * phases[i]

        h = walk_forward(arch, x[None], step, lambda h, skip: h + skip)  # Add merges: the graph's sum
        return h[0], jnp.concatenate(pre)

    with jax.default_matmul_precision("highest"):
        return run(x0), jax.jacfwd(run)(x0)


def solve_leaf(
    arch: Arch,
    params: LayerParams,
    layout: tuple[LayerSlot, ...],
    lower: np.ndarray,
    upper: np.ndarray,
    C: np.ndarray,
    splits: np.ndarray,
    active: np.ndarray,
) -> LeafBound:
    """The exact bound of the leaf domain with flat ``splits`` (N,) and phases ``active`` (N,) (module doc)."""
    phases = {s.index: jnp.asarray(active[s.offset : s.offset + s.size].reshape(s.shape), jnp.float32) for s in layout}
    (out0, pre0), (d_out, d_pre) = affine_pieces(arch, params, phases, jnp.zeros(lower.shape, jnp.float32))
    flat = lambda t: np.asarray(t, np.float64).reshape(t.shape[0], -1)
    G, g = np.asarray(C, np.float64) @ flat(d_out), np.asarray(C, np.float64) @ np.asarray(out0, np.float64)
    split = np.flatnonzero(splits != 0)
    sign = splits[split].astype(np.float64)[:, None]
    # s_j (a_j·x + b_j) ≥ 0  ⟺  -s_j a_j·x ≤ s_j b_j
    A_ub = -sign * flat(d_pre)[split]
    b_ub = sign[:, 0] * np.asarray(pre0, np.float64)[split]
    box = list(zip(np.ravel(lower).astype(np.float64), np.ravel(upper).astype(np.float64), strict=True))
    worst, worst_x = np.inf, None
    for k in range(G.shape[0]):
        res = linprog(G[k], A_ub=A_ub if split.size else None, b_ub=b_ub if split.size else None, bounds=box,
                      method="highs")  # fmt: skip
        if res.status == 2:  # infeasible
            return LeafBound("empty", float("nan"), None)
        if res.status != 0:
            raise RuntimeError(f"branch and bound leaf LP failed: {res.message}")
        value = float(res.fun + g[k])
        if value < worst:
            worst, worst_x = value, np.asarray(res.x, np.float32).reshape(lower.shape)
    return LeafBound("verified" if worst > TOL else "open", worst, None if worst > TOL else worst_x)
