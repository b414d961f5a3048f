"""Data sets shipped as Debian packages (installed with ``apt-get install <package>``)."""

from __future__ import annotations

from pathlib import Path

#: data set name -> (Debian package, directory holding its idx files).
DEBIAN_PACKAGES: dict[str, tuple[str, Path]] = {
    "fashion_mnist": ("dataset-fashion-mnist", Path("/usr/share/datasets/fashion-mnist")),
}


def debian_dir(name: str) -> Path | None:
    """The installed package's data directory for ``name``, or ``None`` (no package, not installed)."""
    if name not in DEBIAN_PACKAGES:
        return None
    directory = DEBIAN_PACKAGES[name][1]
    return directory if directory.is_dir() else None
