"""Search / smoothing standard deviations relative to the scale of each parameter leaf.

One absolute σ for every weight perturbs layers very unevenly (with IBP initialisation the first layer of
a 196-32-32-10 MLP has weight std 0.013, the last 0.18). The relative form is

    σ_leaf = σ_rel · scale(leaf),

with ``scale(leaf)`` the standard deviation of the leaf's entries at initialisation (the starting point
of the run, i.e. the warm-start weights when there is one), and for a leaf whose entries are all equal
(std 0: zero-initialised biases, BatchNorm γ = 1, β = 0) the documented fallback

    scale(leaf) = std(kernel of the same layer)   if the layer has a kernel with std > 0  (biases)
                = 1                               otherwise                    (BatchNorm γ, β: unit scale)

so a bias is perturbed like its layer's weights and BatchNorm's affine terms (acting on unit-variance
activations) like a unit-scale weight. With every scale 1 the relative form is the absolute one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.nets.network import LayerParams

#: A σ: one absolute value for every weight, or one value per leaf (a tree shaped like the params).
Sigma = float | jax.Array | LayerParams


def leaf_scales(trainable: LayerParams) -> LayerParams:
    """``scale(leaf)`` for every leaf of ``trainable`` (Python floats, same tree): std, else the fallback."""
    scales = []
    for layer in trainable:
        std = {k: float(np.std(np.asarray(v))) for k, v in layer.items()}
        kernel = std.get("kernel", 0.0)
        scales.append({k: s if s > 0 else (kernel if kernel > 0 else 1.0) for k, s in std.items()})
    return scales


def relative_sigma(trainable: LayerParams, sigma_rel: float, scales: LayerParams | None = None) -> LayerParams:
    """``σ_leaf = sigma_rel · scale(leaf)`` (``scales`` default :func:`leaf_scales`), one float per leaf."""
    if sigma_rel <= 0:
        raise ValueError(f"sigma_rel must be > 0, got {sigma_rel}")
    scales = leaf_scales(trainable) if scales is None else scales
    return jax.tree_util.tree_map(lambda s: sigma_rel * float(s), scales)


def is_per_leaf(sigma: Sigma) -> bool:
    """True when ``sigma`` is a tree of per-leaf values rather than one number."""
    return isinstance(sigma, list | tuple | dict)


def check_sigma(sigma: Sigma, *, strict: bool = True) -> None:
    """``ValueError`` unless every σ is > 0 (``strict``) or >= 0; traced values are not checked."""
    for s in jax.tree_util.tree_leaves(sigma):
        if isinstance(s, jax.core.Tracer):
            continue
        low = float(np.min(np.asarray(s)))
        if (strict and low <= 0) or low < 0:
            raise ValueError(f"sigma must be {'> 0' if strict else '>= 0'}, got {low}")


def broadcast_sigma(sigma: Sigma, trainable: LayerParams) -> LayerParams:
    """``sigma`` as a tree shaped exactly like ``trainable`` (one number per leaf broadcast to the leaf)."""
    if not is_per_leaf(sigma):
        return jax.tree_util.tree_map(lambda p: jnp.full(p.shape, sigma, p.dtype), trainable)
    return jax.tree_util.tree_map(lambda p, s: jnp.broadcast_to(jnp.asarray(s, p.dtype), p.shape), trainable, sigma)
