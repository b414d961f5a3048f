"""Static, hashable layer specifications and their pure per-layer maps.

A network is a tuple of layer specs (the *architecture*, static under ``jax.jit``) plus a list of
per-layer parameter dicts (the *params*, a pytree). Every layer except :class:`ReLU` and
:class:`LeakyReLU` is affine,

    layer(x) = linear(p, x) + offset(p),

and exposes ``linear`` (the linear part), ``abs_linear`` (the same map with every weight replaced by
its absolute value, |W| x, used by interval arithmetic: r' = |W| r) and ``offset`` (the constant part,
broadcastable to the output without the batch axis). Bound propagators are written once against this
interface, in the style of jax_verify's per-primitive bound rules. Non-affine layers (``is_affine =
False``) get per-kind rules from :mod:`jaxcert.bounds.layer_rules`; a kind without the rule a relaxation
needs raises there (no fallback to ReLU's relaxation).

Inputs are NHWC images or flat vectors; the first axis is always the batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.nets.convolution import conv2d, output_size

Params = dict[str, jax.Array]
Shape = tuple[int, ...]


class LayerSpec:
    """Base class of layer specs. Subclasses are frozen dataclasses (hashable, static for jit)."""

    is_affine: bool = True
    has_params: bool = False

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def apply(self, p: Params, x: jax.Array) -> jax.Array:
        return self.linear(p, x) + self.offset(p)

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def abs_linear(self, p: Params, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def offset(self, p: Params) -> jax.Array | float:
        del p
        return 0.0


@dataclasses.dataclass(frozen=True)
class Dense(LayerSpec):
    """Fully connected layer ``y = x W + b`` with ``W`` of shape (in, out)."""

    features: int
    has_params: bool = dataclasses.field(default=True, init=False)

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 1:
            raise ValueError(f"Dense expects a flat input, got shape {in_shape}; add Flatten()")
        return (self.features,)

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        return x @ p["kernel"]

    def abs_linear(self, p: Params, x: jax.Array) -> jax.Array:
        return x @ jnp.abs(p["kernel"])

    def offset(self, p: Params) -> jax.Array:
        return p["bias"]


@dataclasses.dataclass(frozen=True)
class Conv(LayerSpec):
    """2-D convolution, NHWC input, HWIO kernel, explicit symmetric zero padding."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    has_params: bool = dataclasses.field(default=True, init=False)

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise ValueError(f"Conv expects an HWC input, got shape {in_shape}")
        h, w, _ = in_shape
        size = lambda n: output_size(n, self.kernel, self.stride, self.padding)
        return (size(h), size(w), self.features)

    def _conv(self, w: jax.Array, x: jax.Array) -> jax.Array:
        # XLA's convolution wants one dtype: float64 inputs (x64) meet float32 kernels in float64, as in Dense
        dtype = jnp.result_type(x, w)
        return conv2d(x.astype(dtype), w.astype(dtype), self.stride, self.padding)  # kernel gradient fast on CPU too

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        return self._conv(p["kernel"], x)

    def abs_linear(self, p: Params, x: jax.Array) -> jax.Array:
        return self._conv(jnp.abs(p["kernel"]), x)

    def offset(self, p: Params) -> jax.Array:
        return p["bias"]


@dataclasses.dataclass(frozen=True)
class ReLU(LayerSpec):
    """max(x, 0), with every bound rule (:mod:`jaxcert.bounds.relu_rules`)."""

    is_affine: bool = dataclasses.field(default=False, init=False)

    def apply(self, p: Params, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


@dataclasses.dataclass(frozen=True)
class LeakyReLU(LayerSpec):
    """``y = max(x, a x)`` with ``a = slope``, ``0 ≤ a < 1`` (``a = 0`` is ReLU); equivalently
    ``y = a x + (1 - a) relu(x)``. Its bound rules are in :mod:`jaxcert.bounds.leaky_relu_rules` (a subset:
    relaxations without one raise :class:`jaxcert.bounds.UnsupportedLayerError`)."""

    slope: float = 0.01
    is_affine: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.slope < 1.0:
            raise ValueError(f"LeakyReLU: slope must be in [0, 1), got {self.slope}")

    def apply(self, p: Params, x: jax.Array) -> jax.Array:
        return jnp.maximum(x, self.slope * x)


@dataclasses.dataclass(frozen=True)
class Flatten(LayerSpec):
    """Reshape (B, ...) to (B, prod(...))."""

    def out_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)

    abs_linear = linear


@dataclasses.dataclass(frozen=True)
class Normalize(LayerSpec):
    """Per-channel normalisation ``y = (x - mean) / std`` (channel = last axis).

    The constants are float32 (the dtype of the weights), so they keep the input's dtype also with
    ``jax_enable_x64``: a float32 input stays float32, a float64 input stays float64."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError("Normalize: mean and std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError("Normalize: std must be positive")

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        return x / jnp.asarray(self.std, jnp.result_type(x.dtype, jnp.float32))

    abs_linear = linear

    def offset(self, p: Params) -> jax.Array:
        return -jnp.asarray(self.mean, jnp.float32) / jnp.asarray(self.std, jnp.float32)


@dataclasses.dataclass(frozen=True)
class BatchNorm(LayerSpec):
    """Batch normalisation in evaluation mode (channel = last axis):

        y = (x - mean) * scale / sqrt(var + eps) + bias,

    an affine map, so every relaxation handles it exactly. ``mean``/``var`` are running statistics
    (not trainable: see :func:`jaxcert.nets.network.trainable_mask`).
    """

    eps: float = 1e-5
    has_params: bool = dataclasses.field(default=True, init=False)

    def _gain(self, p: Params) -> jax.Array:
        return p["scale"] * jax.lax.rsqrt(p["var"] + self.eps)

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        return x * self._gain(p)

    def abs_linear(self, p: Params, x: jax.Array) -> jax.Array:
        return x * jnp.abs(self._gain(p))

    def offset(self, p: Params) -> jax.Array:
        return p["bias"] - p["mean"] * self._gain(p)


#: Parameter names that are running statistics rather than trainable weights.
NON_TRAINABLE = frozenset({"mean", "var"})

Arch = tuple[LayerSpec, ...]


def describe(arch: Arch) -> str:
    """One line per layer, for logs."""
    return "\n".join(f"{i:2d} {spec}" for i, spec in enumerate(arch))


def as_arch(layers: Any) -> Arch:
    arch = tuple(layers)
    for spec in arch:
        if not isinstance(spec, LayerSpec):
            raise TypeError(f"not a layer spec: {spec!r}")
    return arch
