"""Networks: static layer specs, the NNX ``Network`` and its pure functional view."""

from jaxcert.nets.architectures import ARCHITECTURES, NORMALIZATION, get_architecture, mlp
from jaxcert.nets.layers import Arch, BatchNorm, Conv, Dense, Flatten, LayerSpec, LeakyReLU, Normalize, ReLU
from jaxcert.nets.network import (
    LayerParams,
    Network,
    forward,
    init_params,
    load_params,
    merge,
    params_of,
    pure_apply,
    shapes,
    split_trainable,
    trainable_mask,
)

__all__ = [
    "ARCHITECTURES",
    "NORMALIZATION",
    "Arch",
    "BatchNorm",
    "Conv",
    "Dense",
    "Flatten",
    "LayerParams",
    "LayerSpec",
    "LeakyReLU",
    "Network",
    "Normalize",
    "ReLU",
    "forward",
    "get_architecture",
    "init_params",
    "load_params",
    "merge",
    "mlp",
    "params_of",
    "pure_apply",
    "shapes",
    "split_trainable",
    "trainable_mask",
]
