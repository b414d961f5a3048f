"""The default schedule of the GLS member axis (PGPE population, RGS samples): a measured rule per backend.

``member_chunk = 0`` (the default) asks :func:`choose_chunk` for the chunk ``k`` of
:func:`jaxcert.train.members.map_members` (``k = N``: one ``vmap`` of all ``N`` members; ``k < N``:
``lax.map`` over ``N / k`` groups of ``k``); an explicit ``member_chunk > 0`` always wins.

* **CPU** (PGPE's population losses and RGS's value-and-gradient per sample alike): ``lax.map`` over chunks
  of :data:`CPU_CHUNK` members (the largest divisor of ``N`` not above it). Measured on CNN3, batch 32,
  2 cores (``experiments/bench_member_schedules.py``, ``experiments/RESULTS.md``): XLA:CPU runs a
  convolution vmapped over per-member kernels as a grouped convolution, several times slower per member
  than ordinary ones, so chunks of 1–2 beat one vmap 2.5–10× for the IBP and CROWN-IBP populations, and
  DeepPoly's one vmap does not even fit (10.8 GiB against 1.2 GiB in chunks of 4). For gradients,
  ``lax.map`` over single samples ran 3-7× slower than one vmap until the convolutions' gradients kept
  XLA:CPU's canonical layouts inside loops (:mod:`jaxcert.nets.conv_swapped`); since then it is the
  fastest RGS schedule (k = 4: 1.1–2.9× one vmap, level with or faster than one unrolled copy per sample,
  which it replaces: a third of its compile time and of its memory).
* **GPU / TPU**: one ``vmap`` unless XLA's memory estimate of it exceeds the limit
  (:data:`ACCELERATOR_MEMORY_FRACTION` of the device's memory); then the largest divisor ``k`` of ``N`` whose
  estimate fits.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

#: members per lax.map step on CPU (experiments/bench_member_schedules.py)
CPU_CHUNK = 1
#: share of an accelerator's memory one vmap of all members may take before the rule chunks it
ACCELERATOR_MEMORY_FRACTION = 0.5
#: the device memory assumed where the runtime reports none
FALLBACK_DEVICE_BYTES = 16 * 2**30


def divisors_descending(n: int) -> list[int]:
    """Every divisor of ``n``, largest first."""
    return [k for k in range(n, 0, -1) if n % k == 0]


def device_memory_bytes() -> float:
    """The first device's memory (``bytes_limit`` of ``memory_stats()``), or :data:`FALLBACK_DEVICE_BYTES`."""
    stats = jax.devices()[0].memory_stats() or {}
    return float(stats.get("bytes_limit", FALLBACK_DEVICE_BYTES))


def memory_limit_bytes() -> float:
    """What one step of the member axis may take on an accelerator (see the module doc)."""
    return ACCELERATOR_MEMORY_FRACTION * device_memory_bytes()


def chunks_by_rule(backend: str) -> bool:
    """Whether the rule runs small ``lax.map`` chunks without asking for a memory estimate (CPU)."""
    return backend == "cpu"


def choose_chunk(
    size: int,
    backend: str,
    estimate_bytes: Callable[[int], float | None] | None = None,
    memory_limit: float | None = None,
) -> tuple[int, str]:
    """``(chunk, why)`` for ``size`` members on ``backend`` (``"cpu"``, ``"gpu"``, ``"tpu"``, ...), each
    member's work a forward pass or a value-and-gradient.

    ``estimate_bytes(k)`` is XLA's memory estimate of one step of ``k`` members (``None``: unknown), asked
    largest ``k`` first unless :func:`chunks_by_rule`; ``memory_limit`` defaults to
    :func:`memory_limit_bytes`. ``chunk == size`` means one vmap."""
    if size < 1:
        raise ValueError(f"the member axis must hold >= 1 member, got {size}")
    if chunks_by_rule(backend):
        chunk = max(k for k in divisors_descending(size) if k <= CPU_CHUNK)
        return chunk, f"lax.map over chunks of {chunk} (the measured CPU rule: vmapped convolutions are slow)"
    if estimate_bytes is None:
        return size, f"one vmap ({backend})"
    limit = memory_limit_bytes() if memory_limit is None else memory_limit
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


def describe(size: int, chunk: int, backend: str | None = None) -> str:
    """One line for the user: how ``size`` members run under ``member_chunk = chunk``."""
    if chunk:
        how = "one vmap" if chunk >= size else f"lax.map over chunks of {chunk}"
        return f"{how} (member_chunk={chunk})"
    backend = backend or jax.default_backend()
    if chunks_by_rule(backend):
        return choose_chunk(size, backend)[1] + "; --member-chunk overrides"
    share = f"{ACCELERATOR_MEMORY_FRACTION:.0%} of the device"
    return f"one vmap unless XLA's memory estimate exceeds {share} ({backend}); --member-chunk overrides"
