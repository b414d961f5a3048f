"""CIFAR-10's binary version (``cifar-10-batches-bin``): records of one label byte and 3072 pixel
bytes in CHW order (1024 red, 1024 green, 1024 blue, each 32×32 row-major)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RECORD = 1 + 3 * 32 * 32
CIFAR_BIN_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}


def parse_cifar_bin(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x uint8 (N, 32, 32, 3) NHWC, y uint8 (N,)."""
    if len(data) % RECORD:
        raise ValueError(f"{source}: size {len(data)} is not a multiple of the CIFAR-10 record size {RECORD}")
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    x = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), records[:, 0].copy()


def load_cifar_bin(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The split's batches from ``directory``, or ``None`` when any file is missing."""
    paths = [directory / name for name in CIFAR_BIN_FILES[split]]
    if not all(p.is_file() for p in paths):
        return None
    parts = [parse_cifar_bin(p.read_bytes(), str(p)) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
