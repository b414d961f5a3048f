"""The in-memory data set every trainer and evaluator consumes.

Images are float32 NHWC arrays in ``[0, 1]`` (the network's first layer normalises them, so that
ε-balls live in raw pixel space); vector data (e.g. concentric spheres) is float32 of shape (N, d).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxcert.nets import NORMALIZATION


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a named data set."""

    num_classes: int
    in_shape: tuple[int, ...]
    normalization: str
    aliases: tuple[str, ...] = ()


#: The image data sets :func:`jaxcert.data.load_dataset` knows.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(10, (28, 28, 1), "mnist", ("MNIST",)),
    "fashion_mnist": DatasetInfo(10, (28, 28, 1), "fashion_mnist", ("fashion-mnist", "FashionMNIST")),
    "cifar10": DatasetInfo(10, (32, 32, 3), "cifar10", ("cifar-10", "CIFAR10", "cifar-10-batches-bin")),
}

SPLITS = ("train", "test")


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs ``x`` (N, H, W, C) or (N, d) float32, labels ``y`` (N,) int32 in ``[0, num_classes)``.

    ``input_range`` is the data range ``(lo, hi)`` that input boxes are clipped to; ``normalization``
    is a key of :data:`jaxcert.nets.NORMALIZATION`; ``source`` says where the examples were read from.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str
    input_range: tuple[float, float] = (0.0, 1.0)
    normalization: str = "none"
    source: str = ""  # where the examples came from (a path, "tensorflow-datasets in DIR", "synthetic")

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y)
        if x.ndim < 2:
            raise ValueError(f"{self.name}: x must have shape (N, ...), got {x.shape}")
        if y.shape != x.shape[:1]:
            raise ValueError(f"{self.name}: y must have shape ({x.shape[0]},), got {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{self.name}: labels must be integers, got dtype {y.dtype}")
        y = y.astype(np.int32)
        if self.num_classes < 2:
            raise ValueError(f"{self.name}: num_classes must be >= 2, got {self.num_classes}")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes}), got [{y.min()}, {y.max()}]")
        lo, hi = (float(v) for v in self.input_range)
        if not lo < hi:
            raise ValueError(f"{self.name}: input_range must satisfy lo < hi, got {self.input_range}")
        if x.size and (x.min() < lo or x.max() > hi):
            raise ValueError(f"{self.name}: inputs lie in [{x.min()}, {x.max()}], outside input_range {(lo, hi)}")
        if self.normalization not in NORMALIZATION:
            raise ValueError(
                f"{self.name}: unknown normalization {self.normalization!r}; known: {sorted(NORMALIZATION)}"
            )
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "input_range", (lo, hi))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input (no batch axis)."""
        return tuple(self.x.shape[1:])

    @property
    def input_dim(self) -> int:
        return math.prod(self.in_shape)

    def take(self, n: int) -> Dataset:
        """The first ``n`` examples (all of them when ``n >= len(self)``)."""
        if n < 0:
            raise ValueError(f"take: n must be >= 0, got {n}")
        return self.subset(slice(0, n))

    def subset(self, index: slice | np.ndarray) -> Dataset:
        """The examples selected by a slice, an index array or a boolean mask."""
        return dataclasses.replace(self, x=self.x[index], y=self.y[index])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.num_classes)
