"""NumPy archives holding ``x_train, y_train, x_test, y_test`` (the layout of ``keras.datasets``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def find_npz(directory: Path, names: tuple[str, ...], other_names: tuple[str, ...] = ()) -> Path | None:
    """``<name>.npz`` for one of ``names`` in ``directory``, else the only ``*.npz`` there that is not
    named after another data set (``other_names``), else ``None``."""
    for name in names:
        if (directory / f"{name}.npz").is_file():
            return directory / f"{name}.npz"
    others = {n.lower() for n in other_names}
    candidates = sorted(p for p in directory.glob("*.npz") if p.stem.lower() not in others)
    return candidates[0] if len(candidates) == 1 else None


def load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of ``split`` as stored (x of any dtype), checked for the expected keys."""
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"{path}: npz is missing {missing}; expected keys {NPZ_KEYS}")
        return np.asarray(archive[f"x_{split}"]), np.asarray(archive[f"y_{split}"])
