"""The default schedule of the GLS member axis (PGPE population, RGS samples): a measured rule per backend.

``member_chunk = 0`` (the default) asks :func:`choose_chunk` for the chunk ``k`` of
:func:`jaxcert.train.members.map_members` (``k = N``: one ``vmap`` of all ``N`` members; ``k < N``:
``lax.map`` over ``N / k`` groups of ``k``); an explicit ``member_chunk > 0`` always wins.

* **CPU, forward** (PGPE's population losses): ``lax.map`` over chunks of :data:`CPU_CHUNK` members
  (the largest divisor of ``N`` not above it). Measured on CNN3, batch 32, 32 members, 2 cores
  (``experiments/bench_member_schedules.py``, ``experiments/RESULTS.md``): XLA:CPU runs a convolution
  vmapped over per-member kernels as a grouped convolution, several times slower per member than
  ordinary ones, so chunks of 1–2 beat one vmap 2.5–10× for the IBP and CROWN-IBP populations, and
  DeepPoly's one vmap does not even fit (10.8 GiB against 1.2 GiB in chunks of 4).
* **CPU, gradient** (RGS's value-and-gradient per sample), up to :data:`MAX_UNROLLED_GRADIENTS` members:
  one copy of the value-and-gradient per member in the program (``unroll``), no vmap and no loop, as long
  as XLA's memory estimate of one vmap of all members fits the limit below (the copies need about as
  much). Measured on CNN3, k = 4, batch 32 and 128, IBP / CROWN-IBP / DeepPoly, all schedules side by
  side in one process (``experiments/bench_member_schedules.py --works rgs``, ``experiments/RESULTS.md``):
  the copies beat one vmap (vmapped convolutions become grouped ones, and their kernel gradients too),
  and ``lax.map`` over single samples ran 3-7× slower than one vmap (a value-and-gradient inside an
  XLA:CPU loop body). The copies cost compile time (about 2× the vmap's at k = 4).
* **GPU / TPU**, and CPU gradients beyond the copies: one ``vmap`` unless XLA's memory estimate of it
  exceeds the limit (:data:`ACCELERATOR_MEMORY_FRACTION` of the device's memory; on CPU
  :data:`CPU_MEMORY_FRACTION` of the available RAM); then the largest divisor ``k`` of ``N`` whose
  estimate fits.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax

#: members per lax.map step on CPU (experiments/bench_member_schedules.py)
CPU_CHUNK = 1
#: on CPU, value-and-gradient members (RGS samples) run as unrolled copies up to this many members
MAX_UNROLLED_GRADIENTS = 8
#: share of an accelerator's memory one vmap of all members may take before the rule chunks it
ACCELERATOR_MEMORY_FRACTION = 0.5
#: share of the host's available memory (CPU) one vmap may take (XLA:CPU's estimate leaves buffers out)
CPU_MEMORY_FRACTION = 0.4
#: the device memory assumed where the runtime reports none
FALLBACK_DEVICE_BYTES = 16 * 2**30


def divisors_descending(n: int) -> list[int]:
    """Every divisor of ``n``, largest first."""
    return [k for k in range(n, 0, -1) if n % k == 0]


def device_memory_bytes() -> float:
    """The first device's memory (``bytes_limit`` of ``memory_stats()``), or :data:`FALLBACK_DEVICE_BYTES`."""
    stats = jax.devices()[0].memory_stats() or {}
    return float(stats.get("bytes_limit", FALLBACK_DEVICE_BYTES))


def host_memory_bytes() -> float:
    """The host's available memory, or :data:`FALLBACK_DEVICE_BYTES` where the OS does not say."""
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return float(FALLBACK_DEVICE_BYTES)


def memory_limit_bytes(backend: str) -> float:
    """What one step of the member axis may take on ``backend`` (see the module doc)."""
    if backend == "cpu":
        return CPU_MEMORY_FRACTION * host_memory_bytes()
    return ACCELERATOR_MEMORY_FRACTION * device_memory_bytes()


def chunks_by_rule(backend: str, gradient: bool) -> bool:
    """Whether the rule runs small ``lax.map`` chunks without asking for a memory estimate (CPU, forward)."""
    return backend == "cpu" and not gradient


def unrolls_by_rule(size: int, backend: str, gradient: bool) -> bool:
    """Whether the rule runs ``size`` members as unrolled copies when one vmap of them fits in memory
    (CPU, value-and-gradient, at most :data:`MAX_UNROLLED_GRADIENTS` members)."""
    return backend == "cpu" and gradient and size <= MAX_UNROLLED_GRADIENTS


def choose_chunk(
    size: int,
    backend: str,
    estimate_bytes: Callable[[int], float | None] | None = None,
    memory_limit: float | None = None,
    *,
    gradient: bool = False,
) -> tuple[int, str]:
    """``(chunk, why)`` for ``size`` members on ``backend`` (``"cpu"``, ``"gpu"``, ``"tpu"``, ...), each
    member's work a forward pass or (``gradient``) a value-and-gradient.

    ``estimate_bytes(k)`` is XLA's memory estimate of one step of ``k`` members (``None``: unknown), asked
    largest ``k`` first unless :func:`chunks_by_rule`; ``memory_limit`` defaults to
    :func:`memory_limit_bytes`. ``chunk == size`` means one vmap."""
    if size < 1:
        raise ValueError(f"the member axis must hold >= 1 member, got {size}")
    if chunks_by_rule(backend, gradient):
        chunk = max(k for k in divisors_descending(size) if k <= CPU_CHUNK)
        return chunk, f"lax.map over chunks of {chunk} (the measured CPU rule: vmapped convolutions are slow)"
    if estimate_bytes is None:
        return size, f"one vmap ({backend})"
    limit = memory_limit_bytes(backend) if memory_limit is None else memory_limit
    estimate = None
    for chunk in divisors_descending(size):
        estimate = estimate_bytes(chunk)
        if estimate is None or estimate <= limit:
            if chunk == size:
                return size, f"one vmap ({backend}; XLA's memory estimate fits {limit / 2**30:.3g} GiB)"
            return chunk, (
                f"lax.map over chunks of {chunk} ({backend}: one vmap of {size} exceeds the {limit / 2**30:.3g} GiB "
                f"limit of XLA's memory estimate)"
            )
    assert estimate is not None  # the loop returned unless every estimate was known and too large
    return 1, f"lax.map over single members ({backend}: even one member needs {estimate / 2**30:.3g} GiB)"


def choose_schedule(
    size: int,
    backend: str,
    estimate_bytes: Callable[[int], float | None] | None = None,
    memory_limit: float | None = None,
    *,
    gradient: bool = False,
) -> tuple[bool, int, str]:
    """``(unrolled, chunk, why)``: :func:`choose_chunk`'s choice, except that where
    :func:`unrolls_by_rule` and one vmap of all members fits (``chunk == size``) the members run as
    unrolled copies (``unrolled``; ``chunk`` is then 1: one member per copy)."""
    chunk, why = choose_chunk(size, backend, estimate_bytes, memory_limit, gradient=gradient)
    if chunk == size and unrolls_by_rule(size, backend, gradient):
        return True, 1, f"{size} unrolled copies ({backend}, value-and-gradient: the measured CPU rule)"
    return False, chunk, why


def describe(size: int, chunk: int, backend: str | None = None, *, gradient: bool = False) -> str:
    """One line for the user: how ``size`` members run under ``member_chunk = chunk``."""
    if chunk:
        how = "one vmap" if chunk >= size else f"lax.map over chunks of {chunk}"
        return f"{how} (member_chunk={chunk})"
    backend = backend or jax.default_backend()
    if chunks_by_rule(backend, gradient):
        return choose_chunk(size, backend)[1] + "; --member-chunk overrides"
    if unrolls_by_rule(size, backend, gradient):
        return (
            f"{size} unrolled copies unless XLA's memory estimate of one vmap exceeds {CPU_MEMORY_FRACTION:.0%} "
            f"of free RAM ({backend}); --member-chunk overrides"
        )
    share = (
        f"{CPU_MEMORY_FRACTION:.0%} of free RAM"
        if backend == "cpu"
        else f"{ACCELERATOR_MEMORY_FRACTION:.0%} of the device"
    )
    return f"one vmap unless XLA's memory estimate exceeds {share} ({backend}); --member-chunk overrides"
