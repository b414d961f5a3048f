"""Multi-process runs on JAX's own distributed runtime (TPU pod slices, several GPU hosts, CPU processes).

:func:`initialize` wraps ``jax.distributed.initialize``: either every process is told the coordinator
(``HOST:PORT`` of process 0), the number of processes ``N`` and its own id ``i``, or, with none of the
three, JAX detects them from the environment (Cloud TPU VMs, SLURM, Open MPI). Afterwards ``jax.devices()``
lists the devices of all ``N`` processes and one jitted program runs over a mesh spanning them
(:func:`jaxcert.train.sharding.training_mesh`); each process feeds its share of a batch with
``jax.make_array_from_process_local_data`` (:func:`global_batch`).

JAX's runtime aborts the process (no Python exception) when the processes do not all join within its
timeout. So that a wrong process count or an unreachable coordinator ends with a clear one-line error
within a bounded time instead, every process but 0 first checks that the coordinator's port answers, and a
watchdog ends the process with exit status 2 and a message if joining takes longer than ``timeout`` seconds
(JAX's own timeout is set beyond it).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcert.train.sharding import BATCH, mesh_axis

#: exit status of a process whose processes did not all join in time
JOIN_TIMEOUT_STATUS = 2


class DistributedInitError(RuntimeError):
    """The processes of a multi-process run could not be connected."""


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)`` (``ValueError`` with the expected form otherwise)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got {address!r}")
    return host.strip("[]"), int(port)


def check_args(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """``True`` for an explicit setting (all three given), ``False`` for auto-detection (none given);
    ``ValueError`` for a partial or inconsistent one."""
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not any(given):
        return False
    if not all(given):
        raise ValueError("give all of coordinator, num_processes and process_id, or none of them (auto-detection)")
    parse_address(coordinator)  # type: ignore[arg-type]
    if num_processes < 1:  # type: ignore[operator]
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:  # type: ignore[operator]
        raise ValueError(f"process_id must lie in [0, {num_processes - 1}], got {process_id}")  # type: ignore[operator]
    return True


def wait_for_port(address: str, timeout: float) -> None:
    """Poll a TCP connection to ``address`` until it succeeds; ``DistributedInitError`` after ``timeout`` s."""
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedInitError(
                    f"cannot reach the coordinator at {address} within {timeout:g} s ({e.strerror or e}); "
                    "is process 0 running, and is the address right?"
                ) from None
            time.sleep(0.2)


def _watchdog(timeout: float, message: str) -> threading.Event:
    """A daemon thread that exits the process with a message unless the returned event is set in time."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(timeout):
            print(f"error: {message}", file=sys.stderr, flush=True)
            os._exit(JOIN_TIMEOUT_STATUS)

    threading.Thread(target=watch, name="jaxcert-distributed-watchdog", daemon=True).start()
    return done


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: float = 120.0,
) -> None:
    """Join the multi-process run (before anything else touches JAX's devices); a no-op if already joined.

    Explicit (all of ``coordinator``, ``num_processes``, ``process_id``) or auto-detected (none). A bad
    setting raises ``ValueError``, an unreachable coordinator :class:`DistributedInitError`, and processes
    that do not all join within ``timeout`` seconds end this process with status 2 and a message on stderr.
    """
    explicit = check_args(coordinator, num_processes, process_id)
    if timeout <= 0:
        raise ValueError(f"the distributed timeout must be > 0 seconds, got {timeout}")
    if jax.distributed.is_initialized():
        if explicit and jax.process_count() != num_processes:
            raise ValueError(f"already joined a run of {jax.process_count()} processes, not {num_processes}")
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    start = time.monotonic()
    if explicit:
        if process_id != 0:
            wait_for_port(coordinator, timeout)  # type: ignore[arg-type]
        what = f"the {num_processes} processes (coordinator {coordinator}, this is process {process_id})"
    else:
        what = "the processes of the auto-detected cluster"
    joining = (
        f"{what} did not join within {timeout:g} s; check that every process was started with the same --num-processes"
    )
    done = _watchdog(max(1.0, timeout - (time.monotonic() - start)), joining)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=int(timeout) + 60)
    except ValueError as e:  # auto-detection found nothing
        raise DistributedInitError(
            f"could not set up the multi-process run ({e}); outside a TPU VM / SLURM / Open MPI job pass "
            "--coordinator HOST:PORT --num-processes N --process-id I"
        ) from None
    finally:
        done.set()
    if explicit and jax.process_count() != num_processes:  # the processes disagree on their number
        raise DistributedInitError(
            f"this process was started with --num-processes {num_processes} but process 0 with "
            f"{jax.process_count()}; start every process with the same --num-processes"
        )


def is_main_process() -> bool:
    """Process 0 writes metrics, plots, results and progress."""
    return jax.process_index() == 0


def multi_process(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` has devices of other processes (its arrays must then be global ``jax.Array`` s)."""
    return mesh is not None and any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A tree of host-local arrays, equal on every process, as global arrays replicated over ``mesh``."""
    return multihost_utils.host_local_array_to_global_array(tree, mesh, P())


def to_host(tree: Any) -> Any:
    """Every leaf as a numpy array on this process (gathered from the other processes where needed)."""

    def leaf(a: Any) -> Any:
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(jax.device_get(a))
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree_util.tree_map(leaf, tree)


def batch_sharding(mesh: Mesh, shard: bool) -> NamedSharding:
    """Data split over the batch axis (``shard``), or replicated over the mesh."""
    return NamedSharding(mesh, P(mesh_axis(mesh, BATCH)) if shard else P())


def process_rows(sharding: NamedSharding, batch_size: int) -> slice:
    """The contiguous rows of a global batch of ``batch_size`` held by this process's devices."""
    spans = {idx[0].indices(batch_size)[:2] for idx in sharding.addressable_devices_indices_map((batch_size,)).values()}
    lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
    if sum(e - s for s, e in spans) != hi - lo:
        raise ValueError(f"this process's share of the batch is not contiguous: {sorted(spans)}")
    return slice(lo, hi)


def global_batch(sharding: NamedSharding, batch_size: int, *local: np.ndarray) -> tuple[jax.Array, ...]:
    """The global arrays of a batch of ``batch_size`` from this process's rows (:func:`process_rows`) of it."""
    return tuple(jax.make_array_from_process_local_data(sharding, a, (batch_size, *a.shape[1:])) for a in local)
