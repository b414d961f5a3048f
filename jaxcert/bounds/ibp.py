"""Interval bound propagation (IBP / Box).

Centre-radius form: an affine layer maps ``(c, r)`` to ``(lin(c) + b, |lin|(r))``; a ReLU maps
``[l, u]`` to ``[relu(l), relu(u)]`` (a crossing neuron becomes ``[0, u]``); every non-affine layer
by the "interval" rule of its kind (:mod:`jaxcert.bounds.layer_rules`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams

Interval = tuple[jax.Array, jax.Array]


def interval_layers(arch: Arch, params: LayerParams, lower: jax.Array, upper: jax.Array) -> list[Interval]:
    """Interval bounds of the input and of every layer output: ``len(arch) + 1`` pairs."""
    out = [(lower, upper)]
    for spec, p in zip(arch, params, strict=True):
        lo, hi = out[-1]
        if spec.is_affine:
            c, r = (hi + lo) / 2, (hi - lo) / 2
            c, r = spec.apply(p, c), spec.abs_linear(p, r)
            out.append((c - r, c + r))
        else:
            out.append(rule_for(spec, "interval", "interval_layers")(lo, hi))
    return out


def affine_interval(lower: jax.Array, upper: jax.Array, W: jax.Array, b: jax.Array) -> Interval:
    """Interval of ``einsum('bh,bhk->bk', h, W) + b`` for ``h`` in ``[lower, upper]``."""
    c, r = (upper + lower) / 2, (upper - lower) / 2
    c = jnp.einsum("bh,bhk->bk", c, W) + b
    r = jnp.einsum("bh,bhk->bk", r, jnp.abs(W))
    return c - r, c + r


def ibp_bounds(
    arch: Arch, params: LayerParams, lower: jax.Array, upper: jax.Array, C: jax.Array | None = None
) -> Interval:
    """IBP bounds of ``C f(x)`` (or of ``f(x)`` if ``C`` is None), ``C`` folded into the last layer."""
    body, body_params, W, b = fold_spec(arch, params, C, lower.shape[0])
    lo, hi = interval_layers(body, body_params, lower, upper)[-1]
    return affine_interval(lo, hi, W, b)
