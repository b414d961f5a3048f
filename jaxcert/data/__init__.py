"""Data: MNIST / Fashion-MNIST / CIFAR-10 loaders (offline first), concentric spheres, batching."""

from jaxcert.data.batching import batches, epoch_order, num_batches
from jaxcert.data.dataset import DATASETS, Dataset, DatasetInfo, dataset_info
from jaxcert.data.idx import parse_idx, read_idx, write_idx
from jaxcert.data.load import ENV_VAR, DatasetNotFoundError, load_dataset
from jaxcert.data.spheres import concentric_spheres, spheres_margin

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "batches",
    "concentric_spheres",
    "dataset_info",
    "epoch_order",
    "load_dataset",
    "num_batches",
    "parse_idx",
    "read_idx",
    "spheres_margin",
    "write_idx",
]
