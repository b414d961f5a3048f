"""Settings of the branch-and-bound stage, validated before any set-up work (imports no JAX).

timeout        seconds of search per example (compilation excluded); then the state is "timeout"
max_domains    domains bounded per example at most; then the state is "unknown"
batch          domains bounded per step, one jitted program (even: the children of batch/2 parents)
alpha_steps    alpha-CROWN steps on the final slopes of each domain (0: CROWN, the min-area slopes)
attack_steps   sign-gradient steps of the attack run from every domain's bound minimiser
inherit        children keep their parent's bounds (pre-activation and margin rows, intersected with
               their own: never looser); False re-bounds every child from the box and its splits alone
               (the comparison of RESULTS.md)
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class BabOptions:
    """Branch-and-bound settings (see the module doc)."""

    timeout: float = 10.0
    max_domains: int = 100_000
    batch: int = 64
    alpha_steps: int = 0
    attack_steps: int = 10
    inherit: bool = True


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bab_options(options: BabOptions) -> None:
    """One-line ``ValueError`` for a setting out of range (see the module doc)."""
    if not isinstance(options.timeout, int | float) or not math.isfinite(options.timeout) or options.timeout <= 0:
        raise ValueError(f"bab timeout must be a finite number of seconds > 0, got {options.timeout!r}")
    if not _is_int(options.max_domains) or options.max_domains < 1:
        raise ValueError(f"bab max_domains must be an int >= 1, got {options.max_domains!r}")
    if not _is_int(options.batch) or options.batch < 2 or options.batch % 2:
        raise ValueError(f"bab batch must be an even int >= 2 (two children per parent), got {options.batch!r}")
    for name in ("alpha_steps", "attack_steps"):
        value = getattr(options, name)
        if not _is_int(value) or value < 0:
            raise ValueError(f"bab {name} must be an int >= 0, got {value!r}")
    if not isinstance(options.inherit, bool):
        raise ValueError(f"bab inherit must be a bool, got {options.inherit!r}")
