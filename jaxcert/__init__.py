"""jaxcert: certified training and Gaussian Loss Smoothing in JAX.

``jaxcert.load_run(run_dir) -> (arch, params, config)`` reads a trained run back (its modules imported on
first use, so ``import jaxcert`` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from jaxcert.nets.layers import Arch
    from jaxcert.nets.network import LayerParams
    from jaxcert.train.configs import TrainConfig

__version__ = "0.1.0"
__all__ = ["load_run"]


def load_run(run_dir: str | Path) -> tuple[Arch, LayerParams, TrainConfig]:
    """``(arch, params, config)`` of the newest readable checkpoint of the training run in ``run_dir``:
    :func:`jaxcert.runs.load_run`."""
    from jaxcert.runs import load_run as load

    return load(run_dir)
