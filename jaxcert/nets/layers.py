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
    """Base class of layer specs. Subclasses are frozen dataclasses (hashable, static for jit).

    Traits read by the drivers: ``is_affine`` (a map ``linear + offset`` of its one input), ``is_merge``
    (a layer of two inputs, :class:`Add`: the graph drivers of :mod:`jaxcert.nets.graph` handle it) and
    ``mixes`` (an affine layer whose outputs each depend on several inputs: interval arithmetic through
    two such layers is no longer exact; unknown affine kinds count as mixing, the safe side) and
    ``onto_boxes`` (the layer maps every box onto a box: the image of ``[l, u]`` is exactly its interval
    hull, so a linear bound of the output concretised on that hull is as tight as on the input box)."""

    is_affine: bool = True
    is_merge: bool = False
    mixes: bool = True
    has_params: bool = False

    @property
    def onto_boxes(self) -> bool:
        """Coordinate-wise affine maps (affine, not mixing) send boxes onto boxes; mixing kinds do not unless
        they say so (:class:`AvgPool` with disjoint windows)."""
        return self.is_affine and not self.is_merge and not self.mixes

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

    mixes = False

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

    mixes = False

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
    mixes = False

    def _gain(self, p: Params) -> jax.Array:
        return p["scale"] * jax.lax.rsqrt(p["var"] + self.eps)

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        return x * self._gain(p)

    def abs_linear(self, p: Params, x: jax.Array) -> jax.Array:
        return x * jnp.abs(self._gain(p))

    def offset(self, p: Params) -> jax.Array:
        return p["bias"] - p["mean"] * self._gain(p)


@dataclasses.dataclass(frozen=True)
class AvgPool(LayerSpec):
    """Average pooling over ``window × window`` patches with stride ``stride``, no padding (NHWC):

        y[h, w, c] = (1 / window²) Σ_{0 ≤ i, j < window} x[h·stride + i, w·stride + j, c],

    a linear map with non-negative weights, so ``abs_linear = linear`` (interval arithmetic maps the
    centre and the radius by the same map) and its transpose is ``jax.linear_transpose``'s."""

    window: int
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.window < 1 or (self.stride is not None and self.stride < 1):
            raise ValueError(f"AvgPool: window and stride must be >= 1, got {self.window}, {self.stride}")

    @property
    def step(self) -> int:
        """The stride (the window when not given)."""
        return self.window if self.stride is None else self.stride

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise ValueError(f"AvgPool expects an HWC input, got shape {in_shape}")
        h, w, c = in_shape
        if min(h, w) < self.window:
            raise ValueError(f"AvgPool: window {self.window} is larger than the input {h}x{w}")
        size = lambda n: (n - self.window) // self.step + 1
        return (size(h), size(w), c)

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        dims, strides = (1, self.window, self.window, 1), (1, self.step, self.step, 1)
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID")  # reduce_window_sum: transposable
        return total / self.window**2

    abs_linear = linear

    @property
    def onto_boxes(self) -> bool:
        """Disjoint windows (``stride ≥ window``): each output averages its own inputs, so the image of a box
        is the product of the windows' intervals ``[avg l, avg u]``, every corner reached — a box. Overlapping
        windows share inputs and do not map boxes onto boxes."""
        return self.step >= self.window


@dataclasses.dataclass(frozen=True)
class Add(LayerSpec):
    """Residual merge: ``y = x + x_source``, the sum of this layer's input ``x`` and the input of the
    earlier layer ``source`` (``0 ≤ source < index of this layer``; 0 = the network's input). The two must
    have the same shape (an identity shortcut), checked when the graph plan is built
    (:func:`jaxcert.nets.graph.plan_for`).

    Affine in its two inputs, with no parameters: every driver handles it through the graph
    (:mod:`jaxcert.nets.graph`): forwards it adds the kept value of node ``source``; backwards the
    coefficients on ``y`` go on to ``x`` and are also added to those of node ``source``."""

    source: int
    is_affine: bool = dataclasses.field(default=False, init=False)
    is_merge: bool = dataclasses.field(default=True, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.source, bool) or not isinstance(self.source, int) or self.source < 0:
            raise ValueError(f"Add: source must be a layer index >= 0, got {self.source!r}")

    def apply(self, p: Params, x: jax.Array) -> jax.Array:
        raise ValueError("Add merges two nodes and has no one-input apply; run the network with jaxcert.nets.forward")


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
