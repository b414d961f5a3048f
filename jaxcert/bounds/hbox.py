"""hBox (hybrid box / hybrid zonotope): symbolic input error terms plus a box part.

The state is ``x ∈ c + G ε + diag(r) δ`` with ``ε`` the input error terms (``G = diag((u - l)/2)`` on the
input box, ``r = 0``) and ``δ`` independent box terms. Affine layers: ``c' = A c + b``, ``G' = A G``,
``r' = |A| r``. A ReLU with ``l, u = c ∓ (Σ|G| + r)``:

    stable inactive (u ≤ 0):  c = 0, G row = 0, r = 0
    stable active   (l ≥ 0):  unchanged (keeps the symbolic form)
    crossing (l < 0 < u):     the interval [0, u] as a pure box: c = u/2, G row = 0, r = u/2

so correlations of crossing neurons are dropped (no new error terms). The bounds are never looser than
IBP's (by induction: every hBox interval hull lies inside the IBP interval of the same neuron), and the
rule is discontinuous where ``l = 0`` (symbolic form on one side, box on the other). An ``Add`` merge sums
the two hybrid zonotopes (:func:`jaxcert.bounds.zonotope.add`).
"""

from __future__ import annotations

from typing import Any

import jax

from jaxcert.bounds import zonotope as zono
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.registry import RelaxationTraits, register
from jaxcert.bounds.relu_rules import hbox_relu  # noqa: F401 (moved there; still importable here)
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.graph import walk_forward
from jaxcert.nets.layers import Arch, LayerSpec
from jaxcert.nets.network import LayerParams


def hbox_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array | None = None,
    **options: Any,
) -> tuple[jax.Array, jax.Array]:
    """hBox bounds of ``C f(x)`` (of ``f(x)`` if ``C`` is None) over the box ``[lower, upper]``.

    The input box starts as the box part and is lifted into input error terms at the first layer that
    mixes coordinates (Conv, Dense or ReLU); diagonal layers before it (Normalize, ...) map it exactly.
    """
    zono.check_no_options("hbox", options)
    zono.check_box("hbox", lower, upper)
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])
    input_lifted = False

    def step(i: int, spec: LayerSpec, z: zono.HybridZonotope) -> zono.HybridZonotope:
        nonlocal input_lifted
        if spec.is_affine:
            z = zono.affine(spec, body_params[i], z, lift=not input_lifted)
            input_lifted = input_lifted or not zono.is_diagonal(spec)
            return z
        layer_rule = rule_for(spec, "hbox", "hbox")
        if not input_lifted:
            z = zono.lift_identity(z)
            input_lifted = True
        return layer_rule(z)

    return zono.final_bounds(walk_forward(body, zono.from_box(lower, upper), step, zono.add), W, b)


register("hbox", hbox_bounds, traits=RelaxationTraits(cost=1))
