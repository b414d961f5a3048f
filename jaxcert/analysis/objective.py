"""The certified loss as a function of the weights alone, the object every analysis looks at:

    L_cert(θ) = (1/B) Σ_i log(1 + Σ_{j≠y_i} exp(-lb_j(θ; x_i, ε)))

on a fixed batch ``(x, y)`` and radius ε, for one relaxation. The analyses take any
``loss_fn(params) -> scalar`` (``LossFn``); they treat it as a static argument of ``jax.jit``, so build
it once and reuse it to hit the compilation cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds import certified_cross_entropy, get_relaxation, margin_lower_bounds
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams

LossFn = Callable[[LayerParams], jax.Array]


def certified_loss(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    relaxation: str = "ibp",
    **options: Any,
) -> jax.Array:
    """Mean certified cross-entropy of the batch (see module docstring)."""
    lb = margin_lower_bounds(arch, params, x, y, eps, relaxation=relaxation, **options)
    return jnp.mean(certified_cross_entropy(lb))


def certified_loss_fn(
    arch: Arch, x: jax.Array, y: jax.Array, eps: float | jax.Array, *, relaxation: str = "ibp", **options: Any
) -> LossFn:
    """``θ ↦ L_cert(θ)`` on the fixed batch ``(x, y)``; options (e.g. ``lo``, ``hi``, ``beta``) are passed
    to the relaxation."""
    get_relaxation(relaxation)  # unknown name -> ValueError now
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(params: LayerParams) -> jax.Array:
        return certified_loss(arch, params, x, y, eps, relaxation=relaxation, **options)

    loss_fn.__name__ = f"certified_loss[{relaxation}]"
    return loss_fn
