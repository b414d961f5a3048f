"""Peak resident memory of this process per benchmark row, without dependencies (used by both sides of
``experiments/bench_reference.py``, including the reference script run in the PyTorch environment).

Linux keeps the process's high-water mark of resident memory (``VmHWM`` in ``/proc/self/status``);
writing ``5`` to ``/proc/self/clear_refs`` resets it to the current resident size, so

    reset_peak(); <run one row>; peak_gib()

is the row's peak (including what the process held before it: the runtime, the weights). Where the reset
is not allowed the figure is the process's peak so far (``ru_maxrss``), flagged by :func:`reset_peak`'s
return value.
"""

from __future__ import annotations

import resource
from pathlib import Path

GiB = 2**30


def reset_peak() -> bool:
    """Reset the high-water mark to the current resident size; ``False`` where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_gib() -> float:
    """The high-water mark of resident memory in GiB (``VmHWM``; ``ru_maxrss`` where /proc has none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB
