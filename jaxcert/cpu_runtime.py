"""Host memory that XLA:CPU reuses between calls instead of faulting it in afresh (glibc only, opt-in).

XLA:CPU allocates each call's large buffers (outputs, the temporaries of a program) with ``malloc``. The
glibc allocator serves them from fresh ``mmap`` regions: the worker threads allocate from their own
arenas, which cannot hold buffers larger than 64 MiB, and fall back to ``mmap`` whatever the thresholds.
Each call then faults every page of those buffers in again and the kernel zeroes them (one fault per
4 KiB: a 302 MB product costs 73 730 faults, 150-200 ms under load, 3-4× the arithmetic). Setting, before
the JAX backend starts its threads,

    M_ARENA_MAX = 1            every thread allocates from the main (``brk``) heap, which can grow,
    M_MMAP_MAX = 0             no allocation is served by a fresh ``mmap``,
    M_TRIM_THRESHOLD = 2³¹ - 1  freed memory at the heap's top is kept (up to 2 GiB),

makes the next call reuse the pages: no faults (``experiments/bench_conv.py``, ``experiments/RESULTS.md``).
The cost is resident memory: the process keeps its peak heap instead of returning it to the system.
The same setting from the shell: ``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:
glibc.malloc.trim_threshold=2147483647``. Accelerator backends allocate device memory themselves and
are not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
#: (mallopt parameter, value) pairs applied by :func:`keep_freed_host_memory`.
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def jax_backend_started() -> bool:
    """Whether a JAX backend (and with it XLA's thread pool) exists in this process."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def keep_freed_host_memory() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``; ``True`` if all took effect.

    Raises ``RuntimeError`` when a JAX backend has already started (its threads keep the arenas they
    have; call this first, before any JAX computation). Returns ``False``, changing nothing, where the C
    library is not glibc (``mallopt`` missing) or refuses a setting."""
    if jax_backend_started():
        raise RuntimeError(
            "keep_freed_host_memory: the JAX backend has already started; call it before any JAX computation"
        )
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS)


def keep_freed_host_memory_if_fresh() -> bool:
    """:func:`keep_freed_host_memory` where it can still take effect (no JAX backend yet), as the training and
    campaign commands do first; ``False``, changing nothing, where it cannot (a backend already started,
    not glibc). Measured in whole training steps (quiet 2-core CPU, ``experiments/RESULTS.md``): CNN3
    CROWN-IBP −9 % wall time (−13 % CPU), CNN7 IBP −4 %, CNN3 IBP unchanged; more under load."""
    return not jax_backend_started() and keep_freed_host_memory()
