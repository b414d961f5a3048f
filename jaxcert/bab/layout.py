"""The split vector of a domain: one int8 per ReLU neuron of the network, layer after layer.

A domain of branch and bound is the input box with some neurons' phases fixed (+1 active, -1 inactive,
0 free; :mod:`jaxcert.bounds.relu_splits`). Its splits travel as one flat vector ``s`` of ``N = Σ_i N_i``
entries (``N_i`` neurons of ReLU layer ``i``, in the order of the layers, each layer flattened), so a
batch of domains is one (D, N) array and every batch has the same shapes: one compilation.

    layer i's split  =  s[offset_i : offset_i + N_i].reshape(shape_i)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax

from jaxcert.bounds.layer_rules import layer_kind
from jaxcert.nets.layers import Arch, ReLU
from jaxcert.nets.network import shapes


class LayerSlot(NamedTuple):
    """Where ReLU layer ``index`` (of the body) lives in the split vector."""

    index: int
    shape: tuple[int, ...]
    offset: int
    size: int


def split_layout(body: Arch, in_shape: tuple[int, ...]) -> tuple[LayerSlot, ...]:
    """The slot of every ReLU layer of ``body`` (the network without its last Dense layer).

    Branch and bound splits ReLU neurons only: any other non-affine kind raises ``ValueError`` naming it."""
    layer_shapes = shapes(body, tuple(in_shape))
    slots, offset = [], 0
    for i, spec in enumerate(body):
        if spec.is_affine:
            continue
        if type(spec) is not ReLU:
            raise ValueError(
                f"branch and bound (bab) splits ReLU neurons only; layer {i} is of kind {layer_kind(spec)!r}"
            )
        size = math.prod(layer_shapes[i])
        slots.append(LayerSlot(i, tuple(layer_shapes[i]), offset, size))
        offset += size
    return tuple(slots)


def total_neurons(layout: tuple[LayerSlot, ...]) -> int:
    return sum(slot.size for slot in layout)


def unflatten(splits: jax.Array, layout: tuple[LayerSlot, ...]) -> dict[int, jax.Array]:
    """``{i: (D, *shape_i)}`` from the flat (D, N) splits."""
    batch = splits.shape[0]
    return {s.index: splits[:, s.offset : s.offset + s.size].reshape(batch, *s.shape) for s in layout}


def flatten(per_layer: dict[int, jax.Array], layout: tuple[LayerSlot, ...]) -> jax.Array:
    """The flat (D, N) array of per-layer (D, *shape_i) arrays (the inverse of :func:`unflatten`)."""
    import jax.numpy as jnp

    return jnp.concatenate([per_layer[s.index].reshape(per_layer[s.index].shape[0], -1) for s in layout], axis=1)
