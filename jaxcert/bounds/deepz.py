"""DeepZ (≈ CAP / FastLin): forward zonotope propagation with one new error term per crossing ReLU.

The input box is the zonotope ``c = (u + l)/2``, ``G = diag((u - l)/2)``. Affine layers are exact
(``c' = A c + b``, ``G' = A G``). A ReLU with pre-activation bounds ``l, u = c ∓ Σ|G|`` maps ``x`` to

    stable inactive (u ≤ 0):  0
    stable active   (l ≥ 0):  x
    crossing (l < 0 < u):     λ x + μ + μ ε_new,   λ = u / (u - l),   μ = -λ l / 2,

the minimal-area parallelogram around the ReLU graph (slope λ, offsets 0 and -λl). The new error terms
are diagonal, so they are kept in the box part of a :class:`HybridZonotope` and lifted into ordinary
generators at the next affine layer (``r ⊙ A(I)``, identical to appending ``diag(μ)`` to ``G``, one
generator per neuron, zero where the neuron is stable). The spec ``C`` is folded into the last layer; an
``Add`` merge sums the two zonotopes (:func:`jaxcert.bounds.zonotope.add`).
"""

from __future__ import annotations

from typing import Any

import jax

from jaxcert.bounds import zonotope as zono
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.registry import RelaxationTraits, register
from jaxcert.bounds.relu_rules import deepz_relu, relu_slope_offset  # noqa: F401 (moved there; still importable here)
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.graph import walk_forward
from jaxcert.nets.layers import Arch, LayerSpec
from jaxcert.nets.network import LayerParams


def deepz_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    **options: Any,
) -> tuple[jax.Array, jax.Array]:
    """DeepZ bounds of ``C f(x)`` (of ``f(x)`` if ``C`` is None) over the box ``[lower, upper]``."""
    zono.check_no_options("deepz", options)
    zono.check_box("deepz", lower, upper)
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])

    def step(i: int, spec: LayerSpec, z: zono.HybridZonotope) -> zono.HybridZonotope:
        return (
            zono.affine(spec, body_params[i], z, lift=True) if spec.is_affine else rule_for(spec, "deepz", "deepz")(z)
        )

    return zono.final_bounds(walk_forward(body, zono.from_box(lower, upper), step, zono.add), W, b)


register("deepz", deepz_bounds, traits=RelaxationTraits(cost=3))
