"""``load_dataset``: find MNIST, Fashion-MNIST or CIFAR-10 offline, or download it when asked.

Resolution order (the first that holds the data wins):

1. ``data_dir`` (explicit), 2. ``$JAXCERT_DATA_DIR`` — each searched in ``<dir>/<name>``, its aliases
   (e.g. ``fashion-mnist``) and ``<dir>`` itself, for idx files (raw or ``.gz``, standard names), CIFAR-10's
   ``*.bin`` batches, or an npz with ``x_train, y_train, x_test, y_test``;
3. the Debian package (``dataset-fashion-mnist`` for fashion_mnist);
4. tensorflow-datasets, only if already prepared locally or ``download=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxcert.data.cifar_bin import load_cifar_bin
from jaxcert.data.dataset import DATASETS, Dataset, DatasetInfo, check_split, dataset_info
from jaxcert.data.debian import DEBIAN_PACKAGES, debian_dir
from jaxcert.data.idx import load_idx_images
from jaxcert.data.npz import find_npz, load_npz
from jaxcert.data.tfds_source import is_prepared, load_tfds, tfds_data_dir

ENV_VAR = "JAXCERT_DATA_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """No offline copy of the data set was found (and no download was requested)."""


def other_names(name: str) -> tuple[str, ...]:
    """Names and aliases of every other known data set (their files must not be mistaken for ``name``)."""
    return tuple(n for other, i in DATASETS.items() if other != name for n in (other, *i.aliases))


def candidate_dirs(root: Path, name: str, info: DatasetInfo) -> list[Path]:
    """Where under ``root`` the data set may live: ``root/<name>``, ``root/<alias>``, ``root``."""
    return [root / n for n in (name, *info.aliases)] + [root]


def load_from_dir(root: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray, Path] | None:
    """``(x, y, source)`` from the first candidate directory holding the data set, else ``None``.
    ``root`` may also be an npz file."""
    info = dataset_info(name)
    if root.is_file() and root.suffix == ".npz":
        return (*load_npz(root, split), root)
    for directory in candidate_dirs(root, name, info):
        if not directory.is_dir():
            continue
        found = load_idx_images(directory, split) if info.in_shape[-1] == 1 else load_cifar_bin(directory, split)
        if found is not None:
            return (*found, directory)
        npz = find_npz(directory, (name, *info.aliases), other_names(name))
        if npz is not None:
            return (*load_npz(npz, split), npz)
    return None


def to_float_images(x: np.ndarray, info: DatasetInfo, source: str) -> np.ndarray:
    """NHWC float32 in [0, 1]: integers are divided by 255, a missing channel axis is added and NCHW
    is transposed to NHWC."""
    x = np.asarray(x)
    if x.size == 0:
        x = x.reshape((0, *info.in_shape))
    h, w, c = info.in_shape
    if x.ndim == 3 and c == 1:
        x = x[..., None]
    if x.ndim == 4 and x.shape[1:] == (c, h, w) and x.shape[1:] != (h, w, c):
        x = x.transpose(0, 2, 3, 1)
    if x.shape[1:] != info.in_shape:
        raise ValueError(f"{source}: images have shape {x.shape[1:]}, expected {info.in_shape}")
    if np.issubdtype(x.dtype, np.integer):
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    x = x.astype(np.float32)
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"{source}: float images must lie in [0, 1], got [{x.min()}, {x.max()}]")
    return x


def not_found_message(name: str, split: str, searched: list[str]) -> str:
    lines = [f"could not find the {name!r} data set ({split} split) offline. Searched: {'; '.join(searched)}."]
    lines.append("Options:")
    for dataset, (package, directory) in DEBIAN_PACKAGES.items():
        lines.append(f"  - apt-get install {package}  (for {dataset}: installs it under {directory})")
    lines += [
        "  - pass data_dir / --data-dir: a directory with the idx files (train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]), CIFAR-10's "
        f"*.bin batches, or an npz with x_train, y_train, x_test, y_test (also found in <dir>/{name}/)",
        f"  - set the environment variable {ENV_VAR} to such a directory",
        "  - download=True (--download) when online: tensorflow-datasets fetches and prepares it",
    ]
    return "\n".join(lines)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    download: bool = False,
) -> Dataset:
    """The ``split`` ("train" or "test") of ``name`` as a :class:`Dataset` of [0, 1] images; the first
    ``limit`` examples when given; ``Dataset.source`` names the folder or file it came from. Raises
    :class:`DatasetNotFoundError` listing every offline option, ``FileNotFoundError`` for a ``data_dir``
    that does not exist (unless ``download``, where tensorflow-datasets creates it)."""
    info = dataset_info(name)
    check_split(split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if data_dir is not None and not download and not Path(data_dir).exists():
        raise FileNotFoundError(f"data_dir {str(data_dir)!r} does not exist")
    searched: list[str] = []
    found = None
    roots = [("data_dir", data_dir), (f"${ENV_VAR}", os.environ.get(ENV_VAR) or None)]
    for label, root in roots:
        if root is None:
            searched.append(f"{label} (not set)" if label.startswith("$") else f"{label} (not given)")
            continue
        searched.append(f"{label}={root}")
        found = load_from_dir(Path(root), name, split)
        if found is not None:
            break
    if found is None and name in DEBIAN_PACKAGES:
        directory = debian_dir(name)
        searched.append(f"Debian package {DEBIAN_PACKAGES[name][0]} ({DEBIAN_PACKAGES[name][1]})")
        found = None if directory is None else load_from_dir(directory, name, split)
    if found is None:
        tfds_dir = tfds_data_dir(data_dir)
        searched.append(f"tensorflow-datasets in {tfds_dir}")
        if download or is_prepared(name, data_dir):
            try:
                x, y = load_tfds(name, split, data_dir=data_dir, download=download, limit=limit)
            except Exception as err:
                raise DatasetNotFoundError(
                    not_found_message(name, split, searched) + f"\ntensorflow-datasets failed: {err}"
                ) from err
            found = (x, y, f"tensorflow-datasets in {tfds_dir}")
    if found is None:
        raise DatasetNotFoundError(not_found_message(name, split, searched))
    x, y, source = found
    if limit is not None:
        x, y = x[:limit], y[:limit]
    y = np.asarray(y).reshape(-1)
    return Dataset(
        x=to_float_images(x, info, str(source)),
        y=y.astype(np.int32),
        num_classes=info.num_classes,
        name=name,
        input_range=(0.0, 1.0),
        normalization=info.normalization,
        source=str(source),
    )
