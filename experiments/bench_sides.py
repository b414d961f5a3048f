"""The side processes of a side-by-side benchmark: each pinned to its CPUs with its thread pools sized, so that
the libraries compared get the same cores.

A side pins itself (:func:`pin_to_side_cpus`, first thing in the child) rather than being pinned by a
``preexec_fn`` of the parent, whose JAX runtime has threads and could deadlock the fork. This module imports
neither JAX nor the project, so a child can call it before its runtime starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The CPUs a side's process pins itself to (comma-separated), set by the parent.
CPUS_VARIABLE = "JAXCERT_BENCH_CPUS"
#: The thread-pool sizes a side gets (BLAS / OpenMP).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: The jaxcert checkout of these scripts.
REPO = Path(__file__).resolve().parent.parent


def side_env(
    cpus: Sequence[int], threads: int, extra: Mapping[str, str] | None = None, root: Path = REPO
) -> dict[str, str]:
    """This environment plus ``extra``, with the side's ``cpus``, ``threads`` per pool and the jaxcert
    checkout ``root`` first on its ``PYTHONPATH``."""
    env = {**os.environ, **(extra or {}), CPUS_VARIABLE: ",".join(map(str, cpus))}
    for var in THREAD_VARIABLES:
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))
    return env


def first_cpus(threads: int) -> list[int]:
    """The first ``threads`` CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))[:threads]


def pin_to_side_cpus() -> None:
    """In a side's process: run on the CPUs its parent chose (:data:`CPUS_VARIABLE`), if any."""
    if os.environ.get(CPUS_VARIABLE):
        os.sched_setaffinity(0, {int(c) for c in os.environ[CPUS_VARIABLE].split(",")})


def run_plan_side(command: list[str], plan: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``command PLAN OUT`` with ``plan`` written to the JSON file PLAN; the JSON it writes to OUT."""
    with tempfile.TemporaryDirectory() as tmp:
        plan_path, out = Path(tmp) / "plan.json", Path(tmp) / "out.json"
        plan_path.write_text(json.dumps(plan))
        done = subprocess.run([*command, str(plan_path), str(out)], env=env, timeout=timeout,
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode or not out.is_file():
            raise RuntimeError(f"{command[0]} side failed: {(done.stderr or done.stdout).strip()[-800:]}")
        return json.loads(out.read_text())
