"""Sharding the sample/population axis (GLS) or the data batch axis (plain training) over devices.

A one-dimensional ``Mesh`` over the devices, or a two-dimensional one ``(BATCH, SAMPLES)`` = data × members
(:func:`training_mesh`, which may span several processes); arrays are split along their *leading* axis with
``NamedSharding(mesh, P(axis))``: the data batch over ``BATCH``, GLS members over ``SAMPLES`` (a 1-D mesh
splits either over its only axis, whatever its name). Inside a jitted step :func:`constrain_leading` pins the parameter
samples (RGS) or the population (PGPE) to that sharding, so XLA evaluates each device's share of the
samples locally and only the reduced gradient / fitness vector crosses devices. Results equal the
unsharded ones up to floating-point reassociation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

SAMPLES = "samples"  # the GLS member axis (RGS samples, PGPE population)
BATCH = "batch"  # the data batch axis


def device_mesh(axis: str = SAMPLES, devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A 1-D mesh named ``axis`` over ``devices`` (all local devices by default, or the first ``n``)."""
    available = jax.devices()
    if devices is None:
        devices = available
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(f"asked for {devices} devices but {len(available)} are available")
        devices = available[:devices]
    return Mesh(np.asarray(devices), (axis,))


def training_mesh(n_devices: int, data: int, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """The mesh of a run over the first ``n_devices`` of ``devices`` (default: every device of every process):
    ``data`` devices along the batch and ``n_devices / data`` along the GLS members, members varying fastest
    (so with several processes the data axis spans processes first).

    ``None`` for one device; a 1-D mesh (``BATCH`` or ``SAMPLES``) when the other axis has size 1, which is
    exactly the single-axis mesh of :func:`device_mesh`; else the 2-D mesh ``(BATCH, SAMPLES)``.
    """
    available = list(jax.devices() if devices is None else devices)
    if not 1 <= n_devices <= len(available):
        raise ValueError(f"asked for {n_devices} devices but {len(available)} are available")
    if data < 1 or n_devices % data:
        raise ValueError(f"the data axis ({data} devices) must divide the number of devices ({n_devices})")
    chosen = sorted(available, key=lambda d: (d.process_index, d.id))[:n_devices]
    members = n_devices // data
    if n_devices == 1:
        return None
    if members == 1 or data == 1:
        return Mesh(np.asarray(chosen), (BATCH if members == 1 else SAMPLES,))
    return Mesh(np.asarray(chosen).reshape(data, members), (BATCH, SAMPLES))


def mesh_axis(mesh: Mesh, axis: str) -> str:
    """``axis`` if the mesh has it; the only axis of a 1-D mesh otherwise (``ValueError`` for a 2-D mesh)."""
    names = tuple(mesh.axis_names)
    if axis in names:
        return axis
    if len(names) == 1:
        return names[0]
    raise ValueError(f"the mesh has axes {names}, not {axis!r}")


def axis_size(mesh: Any, axis: str) -> int:
    """Devices along ``axis`` (:func:`mesh_axis`); the whole mesh when it has a single axis."""
    names = tuple(getattr(mesh, "axis_names", ()))
    if len(names) <= 1:
        return mesh.size
    return int(mesh.shape[mesh_axis(mesh, axis)])


def check_divisible(size: int, mesh: Mesh | None, what: str, axis: str = SAMPLES) -> None:
    """``ValueError`` unless ``size`` splits evenly over the mesh (over ``axis`` of a 2-D mesh)."""
    if mesh is None:
        return
    n = axis_size(mesh, axis)
    if size % n:
        raise ValueError(f"{what} ({size}) must be divisible by the number of devices in the mesh ({n})")


def leading_sharding(mesh: Mesh, axis: str = SAMPLES) -> NamedSharding:
    """Split the leading axis over ``axis`` (the mesh's only axis if 1-D); other axes replicated."""
    return NamedSharding(mesh, P(mesh_axis(mesh, axis)))


def constrain_leading(tree: Any, mesh: Mesh | None, axis: str = SAMPLES) -> Any:
    """Inside ``jit``: shard every leaf of ``tree`` along its leading axis (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, leading_sharding(mesh, axis))


def shard_batch(mesh: Mesh | None, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Place data arrays split along the batch axis (outside ``jit``; identity without a mesh)."""
    if mesh is None:
        return arrays
    for a in arrays:
        check_divisible(a.shape[0], mesh, "batch size", BATCH)
    sharding = leading_sharding(mesh, BATCH)
    return tuple(jax.device_put(a, sharding) for a in arrays)
