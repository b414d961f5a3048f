"""Shi et al. (2021) IBP initialisation.

Every kernel except the last layer's is redrawn as ``W ~ N(0, σ²)`` with

    σ = sqrt(2π) / fan_in,

(fan_in = inputs of a Dense unit, or kernel_h · kernel_w · in_channels of a Conv unit), which keeps the
IBP interval radius roughly constant from layer to layer at initialisation instead of exploding.
Biases and BatchNorm terms are left unchanged; the last (classification) layer keeps its default.
The draws use numpy's generator (initialisation is not traced, and eager ``jax.random`` calls would
compile one program per kernel shape).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxcert.nets.layers import Arch, Conv, Dense
from jaxcert.nets.network import LayerParams


def ibp_init_std(fan_in: int) -> float:
    """σ = sqrt(2π) / fan_in."""
    if fan_in <= 0:
        raise ValueError(f"fan_in must be positive, got {fan_in}")
    return math.sqrt(2.0 * math.pi) / fan_in


def fan_in(kernel: jnp.ndarray) -> int:
    """Inputs per output unit: all kernel axes but the last (Dense (in, out), Conv HWIO)."""
    return math.prod(kernel.shape[:-1])


def ibp_init(arch: Arch, params: LayerParams, seed: int = 0) -> LayerParams:
    """``params`` with every Dense/Conv kernel but the last redrawn from N(0, (sqrt(2π)/fan_in)²)."""
    if len(arch) != len(params):
        raise ValueError(f"params has {len(params)} layer entries but the architecture has {len(arch)}")
    weighted = [i for i, spec in enumerate(arch) if isinstance(spec, Dense | Conv)]
    rng = np.random.default_rng(seed)
    out = [dict(p) for p in params]
    for i in weighted[:-1]:
        kernel = out[i]["kernel"]
        std = ibp_init_std(fan_in(kernel))
        out[i]["kernel"] = jnp.asarray(std * rng.standard_normal(kernel.shape), kernel.dtype)
    return out
