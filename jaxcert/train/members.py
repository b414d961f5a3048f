"""Evaluating one function of the parameters over a population of parameter samples, in one XLA program.

    map_members(f, chunk, mesh)(members, *shared)[i] = f(members[i], *shared)

for every member ``i`` (leading axis of every leaf of ``members``), with the ``shared`` arguments (frozen
statistics, data, step) the same for all. Schedules of the same computation:

- ``chunk=0`` (default): the measured rule of :mod:`jaxcert.train.member_schedule` picks one of the
  below per backend (CPU: ``lax.map`` over small chunks; GPU/TPU: one vmap unless XLA's memory estimate
  of it is too large). With a device ``mesh`` it is one vmap sharded over the devices.
- ``chunk=k >= N``: one ``jax.vmap`` over the whole population, the vectorised program meant for
  accelerators; memory grows with the population size N.
- ``chunk=k < N``: ``lax.map`` over the N/k groups of ``k`` members, vmapped within a group. Peak memory
  grows with ``k`` instead of N, so tight relaxations (full CROWN on CNNs) fit at large N; and on
  XLA:CPU, where a convolution vmapped over per-member kernels lowers to a slow *grouped* convolution,
  small ``k`` is faster than the full vmap.
- (unrolled copies, one ``fn`` per member in the program, were the CPU rule for RGS samples until
  ``lax.map`` bodies' convolution gradients were made fast; ``lax.map`` over single samples now matches or
  beats them with a third of their compile time and memory: ``experiments/RESULTS.md``.)

With a ``mesh`` the member axis of each group (of the whole population when ``chunk=0``) is sharded
over the devices, so ``k`` must be a multiple of the number of devices. Results are the same up to
floating-point reassociation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxcert.train.member_schedule import choose_chunk, chunks_by_rule
from jaxcert.train.sharding import check_divisible, constrain_leading

logger = logging.getLogger(__name__)


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


def map_members(fn: Callable[..., Any], chunk: int = 0, mesh: Mesh | None = None) -> Callable[..., Any]:
    """``(members, *shared) -> stacked fn(member, *shared)``, ``chunk`` members at a time in an XLA loop
    (``0``: the default rule of :mod:`jaxcert.train.member_schedule`; ``>= N``: all at once, one vmap)."""
    check_chunk(chunk, chunk, "the member chunk")  # any chunk divides itself: this checks chunk >= 0
    if chunk:
        check_divisible(chunk, mesh, "member chunk")

    def mapped(members: Any, *shared: Any) -> Any:
        n = population_size(members)
        group = jax.vmap(lambda m: fn(m, *shared))
        size = chunk or default_chunk(fn, members, shared, mesh)
        if size >= n:
            return group(constrain_leading(members, mesh))
        check_chunk(n, size, "the population")
        split = jax.tree_util.tree_map(lambda a: a.reshape(n // size, size, *a.shape[1:]), members)
        out = jax.lax.map(lambda g: group(constrain_leading(g, mesh)), split)
        return jax.tree_util.tree_map(lambda a: a.reshape(n, *a.shape[2:]), out)

    return mapped


def default_chunk(fn: Callable[..., Any], members: Any, shared: tuple[Any, ...], mesh: Mesh | None) -> int:
    """The chunk of ``chunk=0``: one vmap with a ``mesh`` (the devices share the members), otherwise
    :func:`jaxcert.train.member_schedule.choose_chunk` for this backend, which (except where the rule
    chunks on its own) compiles the group for a candidate chunk to read XLA's memory estimate."""
    n = population_size(members)
    if mesh is not None:
        return n
    backend = jax.default_backend()
    abstract = lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))

    def estimate_bytes(k: int) -> float | None:
        chunk_members = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((k, *a.shape[1:]), a.dtype), members)
        program = jax.jit(lambda m, *s: jax.vmap(lambda one: fn(one, *s))(m))
        compiled = program.lower(chunk_members, *jax.tree_util.tree_map(abstract, shared)).compile()
        stats = compiled.memory_analysis()
        if stats is None:
            return None
        return float(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)

    chunk, why = choose_chunk(n, backend, estimate_bytes)
    if not chunks_by_rule(backend) and chunk < n:
        logger.warning("GLS member axis: %d members as %s; member_chunk overrides", n, why)
    return chunk
