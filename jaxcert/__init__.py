"""jaxcert: certified training and Gaussian Loss Smoothing in JAX.

``jaxcert.load_run(run_dir) -> (arch, params, config)`` reads a trained run back (imported on first use).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from jaxcert.runs import load_run

        return load_run
    raise AttributeError(f"module 'jaxcert' has no attribute {name!r}")
