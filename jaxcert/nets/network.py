"""The flax NNX network and its pure functional view.

``Network`` is an ordinary NNX module built from a static architecture (a tuple of
:mod:`jaxcert.nets.layers` specs). Everything certified (bounds, losses, GLS) works on the pure view:

    params = params_of(model)            # list of per-layer dicts, a pytree
    logits = forward(model.arch, params, x)

so that parameter samples can be ``jax.vmap``-ped through the whole computation. ``pure_apply`` gives
the same function through ``nnx.split``/``nnx.merge`` for code that prefers NNX all the way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcert.nets.graph import plan_for, walk_forward
from jaxcert.nets.layers import NON_TRAINABLE, Arch, BatchNorm, Conv, Dense, LayerSpec, Shape, as_arch

LayerParams = list[dict[str, jax.Array]]


class _Static(nnx.Module):
    """A parameter-free layer (ReLU, Flatten, Normalize, AvgPool, Add) inside the NNX module tree."""

    def __init__(self, spec: LayerSpec):
        self.spec = nnx.static(spec) if hasattr(nnx, "static") else spec

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.spec.apply({}, x)


def _build_layer(spec: LayerSpec, in_shape: Shape, rngs: nnx.Rngs) -> nnx.Module:
    if isinstance(spec, Dense):
        return nnx.Linear(in_shape[0], spec.features, rngs=rngs)
    if isinstance(spec, Conv):
        pad = ((spec.padding, spec.padding), (spec.padding, spec.padding))
        return nnx.Conv(
            in_shape[-1],
            spec.features,
            (spec.kernel, spec.kernel),
            strides=(spec.stride, spec.stride),
            padding=pad,
            rngs=rngs,
        )
    if isinstance(spec, BatchNorm):
        return nnx.BatchNorm(in_shape[-1], epsilon=spec.eps, use_running_average=True, rngs=rngs)
    return _Static(spec)


def shapes(arch: Arch, in_shape: Shape) -> list[Shape]:
    """Shapes (without batch axis) of the input and every layer output: ``len(arch) + 1`` entries (the
    nodes of the graph, :func:`jaxcert.nets.graph.plan_for`, which also checks every ``Add``)."""
    return list(plan_for(arch, in_shape).shapes)


def _add(x: jax.Array, skip: jax.Array) -> jax.Array:
    return x + skip


class Network(nnx.Module):
    """A feed-forward network given by ``arch`` for inputs of shape ``in_shape`` (no batch axis)."""

    def __init__(self, arch: Sequence[LayerSpec], in_shape: Shape, *, rngs: nnx.Rngs):
        self.arch = as_arch(arch)
        self.in_shape = tuple(in_shape)
        layer_shapes = shapes(self.arch, self.in_shape)
        self.layers = nnx.List(
            [_build_layer(s, shp, rngs) for s, shp in zip(self.arch, layer_shapes[:-1], strict=True)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        layers = list(self.layers)
        return walk_forward(self.arch, x, lambda i, spec, h: layers[i](h), _add)


def params_of(model: Network) -> LayerParams:
    """The model's variables as a list of per-layer dicts (empty for parameter-free layers)."""
    pure = nnx.to_pure_dict(nnx.state(model)).get("layers", {})
    return [dict(pure.get(i, {})) for i in range(len(model.arch))]


def load_params(model: Network, params: LayerParams) -> None:
    """Write ``params`` (as returned by :func:`params_of`) back into ``model`` in place."""
    if len(params) != len(model.arch):
        raise ValueError(f"expected {len(model.arch)} layer dicts, got {len(params)}")
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, {"layers": {i: p for i, p in enumerate(params) if p}})
    nnx.update(model, state)


def init_params(arch: Sequence[LayerSpec], in_shape: Shape, seed: int = 0) -> LayerParams:
    """Initial params of ``Network(arch, in_shape)`` (flax's default initialisers)."""
    return params_of(Network(arch, in_shape, rngs=nnx.Rngs(seed)))


def forward(arch: Arch, params: LayerParams, x: jax.Array) -> jax.Array:
    """Pure forward pass: ``x_{k+1} = layer_k(params_k, x_k)``, and ``x_{k+1} = x_k + x_j`` at ``Add(source=j)``."""
    check_params(arch, params)
    return walk_forward(arch, x, lambda i, spec, h: spec.apply(params[i], h), _add)


def check_params(arch: Arch, params: LayerParams) -> None:
    if len(params) != len(arch):
        raise ValueError(f"params has {len(params)} layer entries but the architecture has {len(arch)} layers")


def pure_apply(model: Network) -> tuple[Callable[[LayerParams, jax.Array], jax.Array], LayerParams]:
    """``(apply, params)`` with ``apply(params, x) == model(x)``, through ``nnx.split``/``nnx.merge``."""
    graphdef, state = nnx.split(model)

    def apply(params: LayerParams, x: jax.Array) -> jax.Array:
        local = jax.tree_util.tree_map(lambda a: a, state)
        nnx.replace_by_pure_dict(local, {"layers": {i: p for i, p in enumerate(params) if p}})
        return nnx.merge(graphdef, local)(x)

    return apply, params_of(model)


def trainable_mask(params: LayerParams) -> LayerParams:
    """Pytree of bools: True for trainable weights, False for BatchNorm running statistics."""
    return [{k: k not in NON_TRAINABLE for k in p} for p in params]


def split_trainable(params: LayerParams) -> tuple[LayerParams, LayerParams]:
    """``(trainable, frozen)``: the params split by :func:`trainable_mask`; ``merge`` inverts it."""
    trainable = [{k: v for k, v in p.items() if k not in NON_TRAINABLE} for p in params]
    frozen = [{k: v for k, v in p.items() if k in NON_TRAINABLE} for p in params]
    return trainable, frozen


def merge(trainable: LayerParams, frozen: LayerParams) -> LayerParams:
    return [{**a, **b} for a, b in zip(trainable, frozen, strict=True)]


def num_params(params: LayerParams) -> int:
    return sum(int(jnp.size(v)) for v in jax.tree_util.tree_leaves(params))
