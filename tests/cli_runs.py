"""Shared machinery for tests that interrupt a training command: signal it once it prints a given line."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO


def signal_on_line(
    cmd: list[str],
    prefix: str,
    signum: int,
    *,
    cwd: Path,
    env: dict[str, str],
    stderr: int | IO = subprocess.STDOUT,
    timeout: float = 60,
) -> tuple[int | None, str | None]:
    """Run ``cmd``; when a line of its stdout starts with ``prefix``, send it ``signum``; wait until it exits.

    Returns ``(exit code, the matching line or None)``. The output is drained while waiting, so the child
    never blocks on a full pipe; it is killed if it outlives ``timeout`` seconds after the signal."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    matched = None
    try:
        for line in proc.stdout:
            if line.startswith(prefix):
                matched = line
                proc.send_signal(signum)
                break
        proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, matched
