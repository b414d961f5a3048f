"""Evaluating one function of the parameters over a population of parameter samples, in one XLA program.

    map_members(f, chunk, mesh, unroll=...)(members, *shared)[i] = f(members[i], *shared)

for every member ``i`` (leading axis of every leaf of ``members``), with the ``shared`` arguments (frozen
statistics, data, step) the same for all. Three schedules of the same computation:

- ``chunk=0`` (default): one ``jax.vmap`` over the whole population, the vectorised program meant for
  accelerators; memory grows with the population size N.
- ``chunk=k``: ``lax.map`` over the N/k groups of ``k`` members, vmapped within a group. Peak memory
  grows with ``k`` instead of N, so tight relaxations (full CROWN on CNNs) fit at large N; and on
  XLA:CPU, where a convolution vmapped over per-member kernels lowers to a slow *grouped* convolution,
  small ``k`` is faster than the full vmap.
- ``chunk=k, unroll=True``: the N/k groups as N/k copies of the group's program in the one jitted step
  (no XLA loop). XLA:CPU runs the convolutions of a loop body (and vmapped ones) several times slower
  than top-level ones, so on CPU this is the fastest of the three, on a par with a Python loop over
  jitted members while staying one program; compile time and program size grow with N/k. Measured in
  ``experiments/bench_gls.py``.

With a ``mesh`` the member axis of each group (of the whole population when ``chunk=0``) is sharded
over the devices, so ``k`` must be a multiple of the number of devices. Results are the same up to
floating-point reassociation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxcert.train.sharding import check_divisible, constrain_leading


def population_size(members: Any) -> int:
    """The common leading-axis size of the leaves of ``members`` (``ValueError`` if they disagree)."""
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree_util.tree_leaves(members)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"members must share one leading (member) axis; found leading sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def check_chunk(size: int, chunk: int, what: str) -> None:
    """``ValueError`` unless ``chunk`` is 0 (all at once) or a divisor of the population ``size``."""
    if chunk < 0:
        raise ValueError(f"the member chunk must be >= 0 (0: all members at once), got {chunk}")
    if chunk and size % chunk:
        raise ValueError(f"{what} ({size}) must be a multiple of the member chunk ({chunk})")


def map_members(
    fn: Callable[..., Any], chunk: int = 0, mesh: Mesh | None = None, *, unroll: bool = False
) -> Callable[..., Any]:
    """``(members, *shared) -> stacked fn(member, *shared)``, all at once (``chunk=0``) or ``chunk`` at a time
    (in an XLA loop, or in ``n / chunk`` copies of the group's program when ``unroll``)."""
    check_chunk(chunk, chunk, "the member chunk")  # any chunk divides itself: this checks chunk >= 0
    if chunk:
        check_divisible(chunk, mesh, "member chunk")

    def mapped(members: Any, *shared: Any) -> Any:
        n = population_size(members)
        group = jax.vmap(lambda m: fn(m, *shared))
        if not chunk or chunk >= n:
            return group(constrain_leading(members, mesh))
        check_chunk(n, chunk, "the population")
        if unroll:
            outs = [
                group(constrain_leading(jax.tree_util.tree_map(lambda a, i=i: a[i : i + chunk], members), mesh))
                for i in range(0, n, chunk)
            ]
            return jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts), *outs)
        split = jax.tree_util.tree_map(lambda a: a.reshape(n // chunk, chunk, *a.shape[1:]), members)
        out = jax.lax.map(lambda g: group(constrain_leading(g, mesh)), split)
        return jax.tree_util.tree_map(lambda a: a.reshape(n, *a.shape[2:]), out)

    return mapped
