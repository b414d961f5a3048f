"""tensorflow-datasets through ``tfds.data_source`` (random access, no TensorFlow needed).

tfds retries downloads for minutes when offline, so it is only called when the data is already
prepared under the tfds data directory or a download is explicitly requested.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: jaxcert name -> tfds name.
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}


def tfds_data_dir(data_dir: str | Path | None = None) -> Path:
    """tfds's data directory: ``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))


def is_prepared(name: str, data_dir: str | Path | None = None) -> bool:
    """Whether ``<data_dir>/<tfds name>/<version>/dataset_info.json`` exists (a prepared data set),
    checked on the file system alone so that nothing is fetched."""
    root = tfds_data_dir(data_dir) / TFDS_NAMES[name]
    return root.is_dir() and any(root.glob("*/dataset_info.json"))


def load_tfds(
    name: str, split: str, *, data_dir: str | Path | None = None, download: bool = False, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` (x uint8 NHWC) of ``split`` via ``tfds.data_source``; only the first ``limit`` records
    are decoded when given."""
    import tensorflow_datasets as tfds  # heavy import, only on this path

    source = tfds.data_source(TFDS_NAMES[name], split=split, data_dir=str(tfds_data_dir(data_dir)), download=download)
    n = len(source) if limit is None else min(limit, len(source))
    records = source.__getitems__(list(range(n))) if hasattr(source, "__getitems__") else [source[i] for i in range(n)]
    x = np.stack([np.asarray(r["image"]) for r in records]) if n else np.zeros((0,), np.uint8)
    y = np.asarray([int(r["label"]) for r in records], dtype=np.int64)
    return x, y
