"""Which library runs XLA:CPU's convolutions, YNNPACK (XLA's default) or Eigen: a measured rule per program.

XLA:CPU (jaxlib 0.10) hands f32 convolutions and matrix products to YNNPACK. On the 2-core machine of
``experiments/RESULTS.md``, YNNPACK runs some large convolutions on one thread: CNN7's 64→64 3×3 layer at
batch 128 takes 54 ms on a 28×28 map and 103 ms on a 32×32 one with one core busy, where Eigen (XLA's own
convolution, ``--xla_cpu_experimental_ynn_fusion_type=individual_dot``: YNNPACK keeps the products only)
uses both cores, 31 and 47 ms (PyTorch/oneDNN: 39 and 52 ms). Smaller convolutions run faster on YNNPACK.
Whole programs, quiet, Eigen's time / YNNPACK's (Fashion-MNIST shapes):

    CNN7 IBP bounds b128 0.73, CROWN-IBP bounds b128 0.86, IBP train step b128 0.94, CROWN-IBP train b32
    0.95, but CROWN-IBP train b16 1.03 and IBP train b32 1.05; CNN5 IBP / CROWN-IBP train b128 1.05 /
    1.06; CNN3 IBP train b128 1.09, CROWN-IBP train level.

The setting holds for a whole compiled program, so the rule looks at the network and the batch:

    Eigen  ⇔  some Conv has ≥ 64 input and ≥ 64 output channels on an output map of ≥ 28 × 28 pixels,
              and the batch has ≥ 64 examples.

:func:`compiler_options` gives the per-program form (``jax.jit(..., compiler_options=...)``, or
``.lower(...).compile(compiler_options=...)``); :func:`use_eigen_if_fresh` sets it for a whole process
through ``XLA_FLAGS`` before JAX's backend starts (the training and certification commands). Other
backends are untouched: the option only concerns XLA:CPU. An explicit ``xla_cpu_experimental_ynn_fusion_type``
in ``XLA_FLAGS`` always wins. The rule applies to the jaxlib versions it was measured on
(:data:`MEASURED_JAXLIB`); with any other the option may not exist (XLA refuses unknown flags), and XLA's
defaults stay.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence

from jaxcert.cpu_runtime import jax_backend_started
from jaxcert.nets.layers import Conv, LayerSpec
from jaxcert.nets.network import shapes

#: The debug option and its value that leave convolutions to Eigen (YNNPACK keeps the matrix products).
OPTION = "xla_cpu_experimental_ynn_fusion_type"
EIGEN_VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
EIGEN_FLAG = f"--{OPTION}=individual_dot"
#: The rule's thresholds (module doc).
MIN_CHANNELS = 64
MIN_PIXELS = 28 * 28
MIN_BATCH = 64
#: jaxlib (major, minor) versions the rule was measured on.
MEASURED_JAXLIB = ((0, 10),)


def jaxlib_measured() -> bool:
    """Whether the installed jaxlib is one the rule was measured on (read without importing it)."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) in MEASURED_JAXLIB


def wide_convolutions(arch: Sequence[LayerSpec], in_shape: Sequence[int]) -> list[int]:
    """Indices of the Conv layers with ≥ :data:`MIN_CHANNELS` input and output channels on an output map of
    ≥ :data:`MIN_PIXELS` pixels (those YNNPACK ran on one core)."""
    node = shapes(tuple(arch), tuple(in_shape))
    return [
        i
        for i, spec in enumerate(arch)
        if isinstance(spec, Conv)
        and min(node[i][-1], spec.features) >= MIN_CHANNELS
        and node[i + 1][0] * node[i + 1][1] >= MIN_PIXELS
    ]


def prefers_eigen(arch: Sequence[LayerSpec], in_shape: Sequence[int], batch: int) -> bool:
    """The rule of the module doc: Eigen's convolutions for this network at this batch size (never with a
    jaxlib the rule was not measured on)."""
    return batch >= MIN_BATCH and bool(wide_convolutions(arch, in_shape)) and jaxlib_measured()


def compiler_options(arch: Sequence[LayerSpec], in_shape: Sequence[int], batch: int) -> dict[str, str]:
    """XLA compiler options of a CPU program of ``arch`` at ``batch`` (empty: XLA's defaults)."""
    return {OPTION: EIGEN_VALUE} if prefers_eigen(arch, in_shape, batch) else {}


def user_sets_option() -> bool:
    """Whether ``XLA_FLAGS`` already chooses the convolution library (then it wins)."""
    return OPTION in os.environ.get("XLA_FLAGS", "")


def use_eigen_if_fresh(arch: Sequence[LayerSpec], in_shape: Sequence[int], batch: int) -> str | None:
    """Apply the rule to the whole process through ``XLA_FLAGS``, where it can still take effect (no JAX
    backend yet, no choice of the user's); a line for the run's log when it does, else ``None``."""
    if not prefers_eigen(arch, in_shape, batch) or user_sets_option() or jax_backend_started():
        return None
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {EIGEN_FLAG}".strip()
    layers = ", ".join(str(i) for i in wide_convolutions(arch, in_shape))
    return (
        f"CPU convolutions: Eigen for this network at batch {batch} (layers {layers}: YNNPACK runs them on one "
        f"core; XLA_FLAGS={EIGEN_FLAG.split('=')[0]}=... chooses otherwise)"
    )


def use_eigen_for_run_if_fresh(arch_name: str, dataset: str, batch: int) -> str | None:
    """:func:`use_eigen_if_fresh` for a run's architecture name and data set (``None`` for data sets of no
    fixed image shape, e.g. the synthetic ones)."""
    from jaxcert.data.dataset import DATASETS
    from jaxcert.nets import get_architecture

    info = DATASETS.get(dataset)
    if info is None:
        return None
    return use_eigen_if_fresh(get_architecture(arch_name, info.num_classes, dataset), info.in_shape, batch)
