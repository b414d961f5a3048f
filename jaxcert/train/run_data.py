"""The data of a training run: its train and test splits (:func:`load_data`) and the validation hold-out
(:func:`validation_split`). Used by the training loop and, without importing it, by :mod:`jaxcert.runs`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxcert.data import Dataset, concentric_spheres, load_dataset
from jaxcert.train.configs import TrainConfig


def load_data(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """Train and test splits; ``"spheres"`` is the synthetic concentric-spheres problem (d = 10). The
    training split is whole: :func:`setup` holds out the validation examples (:func:`validation_split`).
    A ``data_dir`` that does not exist is a ``FileNotFoundError`` (unless ``download``)."""
    if config.data_dir is not None and not config.download and not Path(config.data_dir).exists():
        raise FileNotFoundError(f"--data-dir {config.data_dir!r} does not exist")
    if config.dataset == "spheres":
        n_train, n_test = config.train_limit or 512, config.test_limit or 512
        source = "synthetic concentric spheres (d = 10, seed {})"
        return (
            dataclasses.replace(concentric_spheres(n_train, 10, seed=config.seed), source=source.format(config.seed)),
            dataclasses.replace(
                concentric_spheres(n_test, 10, seed=config.seed + 1), source=source.format(config.seed + 1)
            ),
        )
    options = {"data_dir": config.data_dir, "download": config.download}
    train = load_dataset(config.dataset, "train", limit=config.train_limit, **options)
    test = load_dataset(config.dataset, "test", limit=config.test_limit, **options)
    return train, test


def validation_split(train: Dataset, val_size: int) -> tuple[Dataset, Dataset | None]:
    """``(train without its last val_size examples, those examples)``; ``(train, None)`` for ``val_size`` 0.
    The held-out examples are never trained on, so tuning on them leaves the test split unseen."""
    if val_size == 0:
        return train, None
    if val_size >= len(train):
        raise ValueError(f"val_size {val_size} leaves no training examples (the split has {len(train)})")
    n = len(train) - val_size
    return train.subset(slice(0, n)), dataclasses.replace(train.subset(slice(n, None)), name=f"{train.name}-val")
