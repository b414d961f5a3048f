"""Interval bound propagation (IBP / Box).

Centre-radius form: an affine layer maps ``(c, r)`` to ``(lin(c) + b, |lin|(r))``; a ReLU maps
``[l, u]`` to ``[relu(l), relu(u)]`` (a crossing neuron becomes ``[0, u]``); every non-affine layer
by the "interval" rule of its kind (:mod:`jaxcert.bounds.layer_rules`); an ``Add`` merge sums the
intervals of its two nodes, ``[l_a + l_b, u_a + u_b]`` (:mod:`jaxcert.nets.graph`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets.graph import walk_forward
from jaxcert.nets.layers import Arch, LayerSpec, Params
from jaxcert.nets.network import LayerParams, check_params

Interval = tuple[jax.Array, jax.Array]


def add_intervals(a: Interval, b: Interval) -> Interval:
    """``[l_a + l_b, u_a + u_b]``: the interval of a sum (an ``Add`` merge; exact only for uncorrelated terms)."""
    return a[0] + b[0], a[1] + b[1]


def interval_step(spec: LayerSpec, p: Params, lo: jax.Array, hi: jax.Array, where: str) -> Interval:
    """The interval image of ``[lo, hi]`` under one (non-merge) layer: centre ``layer(c)``, radius ``|L| r``
    for an affine layer, the kind's "interval" rule otherwise."""
    if spec.is_affine:
        c, r = (hi + lo) / 2, (hi - lo) / 2
        c, r = spec.apply(p, c), spec.abs_linear(p, r)
        return c - r, c + r
    return rule_for(spec, "interval", where)(lo, hi)


def interval_layers(arch: Arch, params: LayerParams, lower: jax.Array, upper: jax.Array) -> list[Interval]:
    """Interval bounds of the input and of every layer output (the graph's nodes): ``len(arch) + 1`` pairs."""
    out = [(lower, upper)]

    def step(i: int, spec: LayerSpec, interval: Interval) -> Interval:
        out.append(interval_step(spec, params[i], *interval, "interval_layers"))
        return out[-1]

    def merge(interval: Interval, skip: Interval) -> Interval:
        out.append(add_intervals(interval, skip))
        return out[-1]

    check_params(arch, params)
    walk_forward(arch, out[0], step, merge)
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
