"""Stability of ReLU neurons under a relaxation's intermediate (pre-activation) bounds ``[l, u]``:

    unstable (crossing)  l < 0 < u,     stable active  l ≥ 0,     stable inactive  u ≤ 0

(a neuron with ``l < 0 = u`` counts as inactive, ``l = 0 < u`` as active: both are exact there).
Counted per ReLU layer and per example. Intermediate bounds come from

- IBP (``"ibp"``/``"box"``, and ``"crown-ibp"``, whose intermediate bounds *are* IBP's):
  :func:`jaxcert.bounds.interval_layers`;
- CROWN (``"crown"``/``"deeppoly"`` and the ``"crown-<rule>"`` slope variants):
  :func:`jaxcert.bounds.crown.crown_preactivation_bounds` (back-substitution for every ReLU layer).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcert.bounds import input_box, interval_layers
from jaxcert.bounds.layer_rules import activation_indices
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams

Interval = tuple[jax.Array, jax.Array]

_IBP_INTERMEDIATE = frozenset({"ibp", "box", "crown-ibp"})
_CROWN_ALIASES = {"crown": "adaptive", "deeppoly": "adaptive"}


class NeuronStatus(NamedTuple):
    """Counts per ReLU layer and example, each of shape (n_relu_layers, B); they partition the layer."""

    unstable: jax.Array
    active: jax.Array
    inactive: jax.Array

    def unstable_fraction(self) -> jax.Array:
        """Unstable neurons / layer size, shape (n_relu_layers, B)."""
        return self.unstable / (self.unstable + self.active + self.inactive)


def relu_indices(arch: Arch) -> list[int]:
    """Indices of the non-affine layers, each checked to have an "interval" rule (ReLU today): the
    counts below read ``l < 0 < u`` as "unstable", the kink of ReLU at 0."""
    return activation_indices(arch, "interval", "unstable_counts")


def _crown_rule(relaxation: str) -> str | None:
    if relaxation in _CROWN_ALIASES:
        return _CROWN_ALIASES[relaxation]
    if relaxation.startswith("crown-"):
        from jaxcert.bounds.relu_slopes import RULE_NAMES

        rule = relaxation.removeprefix("crown-")
        return rule if rule in RULE_NAMES and rule != "given" else None
    return None


def has_preactivation_bounds(relaxation: str) -> bool:
    """Whether :func:`preactivation_bounds` knows the intermediate bounds of ``relaxation``."""
    return relaxation in _IBP_INTERMEDIATE or _crown_rule(relaxation) is not None


def preactivation_bounds(
    arch: Arch, params: LayerParams, lower: jax.Array, upper: jax.Array, *, relaxation: str = "ibp", **options: Any
) -> list[Interval]:
    """``(l, u)`` of the input of every ReLU of ``arch`` (in order) over the box ``[lower, upper]``."""
    if relaxation in _IBP_INTERMEDIATE:  # options of the output pass (e.g. CROWN-IBP's beta) do not apply
        layers = interval_layers(arch, params, lower, upper)
        return [layers[i] for i in relu_indices(arch)]
    rule = _crown_rule(relaxation)
    if rule is None:
        raise ValueError(
            f"intermediate bounds of relaxation {relaxation!r} are not available here; use one of "
            f"{sorted(_IBP_INTERMEDIATE)}, 'crown', 'deeppoly' or 'crown-<slope rule>'"
        )
    from jaxcert.bounds.crown import crown_preactivation_bounds

    return crown_preactivation_bounds(arch, params, lower, upper, lower_slope=rule, **options)


def neuron_status(bounds: list[Interval]) -> NeuronStatus:
    """Counts of unstable / active / inactive neurons of every layer's bounds, per example."""
    if not bounds:
        raise ValueError("the network has no ReLU layer, so there is nothing to count")

    def count(mask: jax.Array) -> jax.Array:
        return jnp.sum(mask.reshape(mask.shape[0], -1), axis=1)

    unstable = jnp.stack([count((lo < 0) & (hi > 0)) for lo, hi in bounds])
    active = jnp.stack([count(lo >= 0) for lo, _ in bounds])
    inactive = jnp.stack([count((hi <= 0) & (lo < 0)) for lo, hi in bounds])
    return NeuronStatus(unstable, active, inactive)


def unstable_counts(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    eps: float | jax.Array,
    *,
    relaxation: str = "ibp",
    lo: float = 0.0,
    hi: float = 1.0,
    **options: Any,
) -> NeuronStatus:
    """Neuron status of every ReLU layer over the clipped ε-ball around ``x`` (see module docstring)."""
    lower, upper = input_box(x, eps, lo, hi)
    return neuron_status(preactivation_bounds(arch, params, lower, upper, relaxation=relaxation, **options))
