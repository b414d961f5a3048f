"""The static layer graph: a topologically ordered chain of layer specs plus :class:`Add` merges.

An architecture stays a flat tuple ``arch`` (and ``params`` a list, one dict per layer). Its *nodes* are
the values between layers:

    node 0 = the network input,   node i = the input of layer i = the output of layer i - 1,
    node len(arch) = the network output.

Every layer maps node ``i`` to node ``i + 1``, except :class:`Add(source=j) <jaxcert.nets.layers.Add>` at
index ``i``, which adds node ``j`` (``j < i``): ``node_{i+1} = node_i + node_j`` (a residual shortcut).

Drivers over the graph:

    forward   :func:`walk_forward` keeps the value of each node an ``Add`` reads (a *skip source*) until
              its last reader, and merges with a driver-given ``merge`` (sum of arrays, of intervals, of
              zonotopes, an ONNX ``Add`` node, ...)
    backward  back-substitution (:func:`jaxcert.bounds.backsub.backsubstitute`) keeps one *pending*
              coefficient per skip source: at ``Add(source=j)`` the coefficients ``A`` on node ``i + 1``
              pass on to node ``i`` AND are added to ``pending[j]``; when the walk reaches node ``j``,
              ``pending[j]`` is added to ``A`` (the transpose of ``(x, x_j) ↦ x + x_j`` is ``A ↦ (A, A)``).

The static facts the drivers need are computed once per (architecture, input shape) into a
:class:`GraphPlan` (:func:`plan_for`, cached): node shapes, skip sources and their last readers, the
activation layers, and which nodes have *exact* interval bounds (see :attr:`GraphPlan.exact_nodes`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from jaxcert.nets.layers import Add, Arch, LayerSpec, Shape

State = TypeVar("State")


@dataclasses.dataclass(frozen=True, eq=False)
class GraphPlan:
    """Static facts of ``arch`` on inputs of shape ``in_shape`` (no batch axis), see the module doc.

    ``shapes``         shape of every node (``len(arch) + 1`` entries)
    ``skip_sources``   nodes read by an ``Add``, mapped to the index of the last ``Add`` reading them
    ``activations``    indices of the non-affine, non-merge layers (ReLU, LeakyReLU, ...)
    ``merges``         indices of the ``Add`` layers
    ``exact_nodes``    node ``i`` is in it if interval arithmetic from the input box gives the exact range of
                       every coordinate of node ``i``: the layers before it are affine (no activation, no
                       merge) and at most one of them mixes coordinates (``spec.mixes``: Dense, Conv, AvgPool;
                       Normalize, BatchNorm, Flatten map coordinates one to one). One linear map of a box is
                       exact coordinate-wise (each output's extremes are box vertices), and coordinate-wise
                       affine maps keep it so; a second mixing map, or an ``Add`` of two correlated nodes, is not.
                       A mixing map of boxes onto boxes (disjoint AvgPool) met while the value is still a box
                       does not count: its output is again a box.
    ``box_prefix``     the largest ``k`` such that layers ``0 .. k-1`` all map boxes onto boxes
                       (``spec.onto_boxes``: coordinate-wise affine maps, AvgPool with disjoint windows) and no
                       shortcut reads a node before ``k``: the image of the input box at node ``k`` is exactly
                       its interval box, so back-substitution may stop there and concretise on that box
                       (``min_{x ∈ box} ⟨A, f(x)⟩ = min_{z ∈ f(box)} ⟨A, z⟩`` with ``f(box)`` a box).
    """

    arch: Arch
    in_shape: Shape
    shapes: tuple[Shape, ...]
    skip_sources: dict[int, int]
    activations: tuple[int, ...]
    merges: tuple[int, ...]
    exact_nodes: frozenset[int]
    box_prefix: int = 0

    @property
    def has_merges(self) -> bool:
        return bool(self.merges)


def _check_add(arch: Arch, index: int, spec: Add, node_shapes: Sequence[Shape]) -> None:
    if spec.source >= index:
        raise ValueError(
            f"layer {index} ({spec}): source must be an earlier node (0 <= source < {index}), got {spec.source}"
        )
    if node_shapes[spec.source] != node_shapes[index]:
        raise ValueError(
            f"layer {index} ({spec}): the shortcut adds node {spec.source} of shape {node_shapes[spec.source]} to "
            f"node {index} of shape {node_shapes[index]}; an identity shortcut needs equal shapes"
        )


@functools.lru_cache(maxsize=256)
def _plan(arch: Arch, in_shape: Shape) -> GraphPlan:
    node_shapes: list[Shape] = [in_shape]
    skip_sources: dict[int, int] = {}
    exact, mixing, plain = {0}, 0, True
    for i, spec in enumerate(arch):
        if not isinstance(spec, LayerSpec):
            raise TypeError(f"not a layer spec: {spec!r}")
        if isinstance(spec, Add):
            _check_add(arch, i, spec, node_shapes)
            skip_sources[spec.source] = i
        elif spec.is_merge:
            raise ValueError(f"layer {i} ({spec}): merge kind {type(spec).__name__!r} unknown to the graph plan")
        node_shapes.append(spec.out_shape(node_shapes[-1]))
        plain = plain and spec.is_affine
        # a map of boxes onto boxes applied to the input box keeps it a box: it does not count as mixing
        mixing += spec.is_affine and spec.mixes and not (spec.onto_boxes and mixing == 0)
        if plain and mixing <= 1:
            exact.add(i + 1)
    box_prefix = 0
    while box_prefix < len(arch) and arch[box_prefix].onto_boxes:
        box_prefix += 1
    box_prefix = min([box_prefix, *skip_sources])
    return GraphPlan(
        arch=arch,
        in_shape=in_shape,
        shapes=tuple(node_shapes),
        skip_sources=skip_sources,
        activations=tuple(i for i, s in enumerate(arch) if not s.is_affine and not s.is_merge),
        merges=tuple(i for i, s in enumerate(arch) if s.is_merge),
        exact_nodes=frozenset(exact),
        box_prefix=box_prefix,
    )


def plan_for(arch: Sequence[LayerSpec], in_shape: Sequence[int]) -> GraphPlan:
    """The :class:`GraphPlan` of ``arch`` on inputs of shape ``in_shape`` (cached per pair; ``ValueError``
    for an ``Add`` whose source is not an earlier node or has another shape, and for bad layer shapes)."""
    return _plan(tuple(arch), tuple(int(d) for d in in_shape))


def skip_sources(arch: Sequence[LayerSpec]) -> dict[int, int]:
    """Nodes read by an ``Add`` -> the index of the last ``Add`` reading them (no shapes needed)."""
    out: dict[int, int] = {}
    for i, spec in enumerate(arch):
        if isinstance(spec, Add):
            if not 0 <= spec.source < i:
                raise ValueError(f"layer {i} ({spec}): source must be an earlier node (0 <= source < {i})")
            out[spec.source] = i
    return out


def walk_forward(
    arch: Sequence[LayerSpec],
    state: State,
    step: Callable[[int, LayerSpec, State], State],
    merge: Callable[[State, State], State],
) -> State:
    """Run ``state`` through the graph: ``state ← step(i, spec, state)`` for every layer but the merges,
    ``state ← merge(state, kept[j])`` at ``Add(source=j)``; the value of node ``j`` is kept from when the
    walk reaches it until its last reader."""
    sources = skip_sources(arch)
    kept: dict[int, Any] = {}
    for i, spec in enumerate(arch):
        if i in sources:
            kept[i] = state
        if isinstance(spec, Add):
            state = merge(state, kept[spec.source])
            if sources[spec.source] == i:
                del kept[spec.source]
        else:
            state = step(i, spec, state)
    return state


def crossing_skips(arch: Sequence[LayerSpec], split: int) -> list[tuple[int, int]]:
    """``(source, add index)`` of the shortcuts that cross a cut before layer ``split`` (source < split ≤ add)."""
    return [(spec.source, i) for i, spec in enumerate(arch) if isinstance(spec, Add) and spec.source < split <= i]


def suffix(arch: Sequence[LayerSpec], split: int) -> Arch:
    """The layers ``arch[split:]`` as an architecture of their own (every ``Add`` source shifted by
    ``-split``); ``ValueError`` if a shortcut crosses the cut (the suffix would miss a node it reads)."""
    crossing = crossing_skips(arch, split)
    if crossing:
        source, add = crossing[0]
        raise ValueError(
            f"the cut before layer {split} falls inside a residual block: layer {add} (Add) reads node {source}; "
            f"cut at or before layer {source}, or after layer {add}"
        )
    return tuple(
        dataclasses.replace(spec, source=spec.source - split) if isinstance(spec, Add) else spec
        for spec in arch[split:]
    )
