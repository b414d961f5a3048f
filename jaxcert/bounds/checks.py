"""Clear errors for inputs that do not fit the network (checked at trace time, from static shapes)."""

from __future__ import annotations

import jax

from jaxcert.nets.layers import Arch, BatchNorm, Conv, Dense
from jaxcert.nets.network import LayerParams


def check_labels(x: jax.Array, y: jax.Array) -> None:
    """Raise ``ValueError`` unless ``y`` holds exactly one label per example of the batch ``x``."""
    if y.shape != x.shape[:1]:
        raise ValueError(f"labels shape {y.shape} does not match batch size {x.shape[0]}")


def check_input(arch: Arch, params: LayerParams, x: jax.Array) -> None:
    """Raise ``ValueError`` if ``x`` (batched) or ``params`` do not fit ``arch``."""
    if len(params) != len(arch):
        raise ValueError(f"params has {len(params)} layer entries but the architecture has {len(arch)}")
    if x.ndim < 2:
        raise ValueError(f"x must have a leading batch axis, got shape {x.shape}")
    shape = tuple(x.shape[1:])
    for i, (spec, p) in enumerate(zip(arch, params, strict=True)):
        if isinstance(spec, Dense):
            if len(shape) != 1 or p["kernel"].shape[0] != shape[0]:
                raise ValueError(
                    f"layer {i} ({spec}) expects a flat input of size {p['kernel'].shape[0]}, "
                    f"got shape {shape} (input shape {tuple(x.shape[1:])})"
                )
        elif isinstance(spec, BatchNorm):
            channels = p["scale"].shape[0]
            if len(shape) not in (1, 3) or shape[-1] != channels:
                raise ValueError(
                    f"layer {i} ({spec}) expects flat or HWC input with {channels} channels (last axis), got shape "
                    f"{shape} (input shape {tuple(x.shape[1:])})"
                )
        elif isinstance(spec, Conv):
            channels = p["kernel"].shape[2]
            if len(shape) != 3 or shape[-1] != channels:
                raise ValueError(
                    f"layer {i} ({spec}) expects HWC input with {channels} channels, got shape {shape} "
                    f"(input shape {tuple(x.shape[1:])})"
                )
        shape = spec.out_shape(shape)
