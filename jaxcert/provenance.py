"""Provenance of a results file: the versions, the machine and the source checkout that produced it.

:func:`provenance` returns a JSON-ready dict, written into ``results.json``, ``certify.json`` and the
benchmark and experiment JSONs::

    {"jaxcert": "0.1.0", "jax": "0.4.35", "jaxlib": "0.4.35", "flax": ..., "optax": ..., "evosax": ...,
     "python": "3.11.7", "platform": "Linux-6.8-x86_64-with-glibc2.39", "backend": "cpu",
     "git_commit": "58440a1", "git_dirty": false}

A package that is not installed reads ``null``; ``git_commit`` and ``git_dirty`` are ``null`` unless the
imported ``jaxcert`` package lies in a git checkout (its parent folder is the top of the work tree) and
``git`` runs. Nothing here raises: provenance must never cost a run its results.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions are recorded (besides jaxcert itself).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "evosax")

_GIT_TIMEOUT_S = 5.0


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _versions() -> dict[str, str | None]:
    from jaxcert import __version__

    return {"jaxcert": __version__, **{name: package_version(name) for name in PACKAGES}}


def backend() -> str | None:
    """JAX's default backend (``cpu``, ``gpu``, ``tpu``), or None if it cannot be initialised."""
    try:
        import jax

        return jax.default_backend()
    except Exception:  # a broken or missing backend must not lose the results
        return None


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=True
    )
    return done.stdout.strip()


def git_state(root: str | Path | None = None) -> tuple[str | None, bool | None]:
    """``(short commit hash, dirty)`` of the git checkout whose top folder is ``root`` (default: the folder
    holding the ``jaxcert`` package); ``(None, None)`` if it is not the top of a work tree or git fails.
    Dirty: a tracked file differs from the commit (untracked files do not count)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None, None  # e.g. an installed copy inside some other repository
        commit = _git(root, "rev-parse", "--short", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None, None
    return commit or None, dirty


def provenance() -> dict[str, Any]:
    """Versions of jaxcert and its numerical stack, Python, the platform, JAX's backend and the git commit."""
    commit, dirty = git_state()
    return {
        **_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": backend(),
        "git_commit": commit,
        "git_dirty": dirty,
    }
