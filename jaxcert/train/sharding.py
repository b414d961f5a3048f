"""Sharding the sample/population axis (GLS) or the data batch axis (plain training) over devices.

A one-dimensional ``Mesh`` over the devices; arrays are split along their *leading* axis with
``NamedSharding(mesh, P(axis))``. Inside a jitted step :func:`constrain_leading` pins the parameter
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

SAMPLES = "samples"
BATCH = "batch"


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


def check_divisible(size: int, mesh: Mesh | None, what: str) -> None:
    """``ValueError`` unless ``size`` splits evenly over the mesh."""
    if mesh is not None and size % mesh.size:
        raise ValueError(f"{what} ({size}) must be divisible by the number of devices in the mesh ({mesh.size})")


def leading_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading axis over the mesh's (only) axis; other axes replicated."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def constrain_leading(tree: Any, mesh: Mesh | None) -> Any:
    """Inside ``jit``: shard every leaf of ``tree`` along its leading axis (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, leading_sharding(mesh))


def shard_batch(mesh: Mesh | None, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Place data arrays split along the batch axis (outside ``jit``; identity without a mesh)."""
    if mesh is None:
        return arrays
    for a in arrays:
        check_divisible(a.shape[0], mesh, "batch size")
    sharding = leading_sharding(mesh)
    return tuple(jax.device_put(a, sharding) for a in arrays)
