"""How many timed calls a benchmark makes after its warm-up call (both sides of ``bench_reference.py``).

    n = max(1, min(max(repeats, ⌈min_seconds / warm-up⌉), ⌊max_seconds / warm-up⌋))

At least ``repeats`` calls, and for short calls enough of them to fill ``min_seconds`` (the fastest of 3 calls
of a 5 ms step read 0.6× the fastest of 200 in one quiet run: scheduler noise dominates a few short calls),
never more than fit in ``max_seconds``, and at least one (``min_seconds`` = 0: the ``repeats`` rule of
``bench_bounds.py``). Pure Python: the reference's interpreter imports it too.
"""

from __future__ import annotations

import math

#: Seconds of timed calls a short row gets at least (its calls' fastest counts).
MIN_TIMED_SECONDS = 1.0


def timed_call_count(repeats: int, warmup_s: float, max_seconds: float, min_seconds: float = MIN_TIMED_SECONDS) -> int:
    """The number of timed calls (module doc) for a call whose warm-up took ``warmup_s`` seconds."""
    per_call = max(warmup_s, 1e-9)
    wanted = max(repeats, math.ceil(min_seconds / per_call))
    return max(1, min(wanted, int(max_seconds // per_call)))
