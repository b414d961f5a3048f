"""Branch and bound as a stage of :func:`jaxcert.certify.certify_dataset`: the examples left open, one by one.

For each example ``r`` (input ``x_r``, label ``y_r``) the box is the clipped ε-ball
``[max(x_r - ε, lo), min(x_r + ε, hi)]`` and the specification the margins ``z_y - z_j`` (j ≠ y), as in
the cascade; :func:`jaxcert.bab.search.bab_example` runs on it with one :class:`~jaxcert.bab.search.Bounder`
compiled for the network (its compilation time is reported apart from the search).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from jaxcert.bab.options import BabOptions
from jaxcert.bab.search import BabResult, Bounder, bab_example


def margin_rows(label: int, num_classes: int) -> np.ndarray:
    """``C`` (K-1, K) with rows ``e_y - e_j`` for every ``j ≠ y``."""
    others = [j for j in range(num_classes) if j != label]
    C = np.zeros((len(others), num_classes), np.float32)
    C[:, label] = 1.0
    C[np.arange(len(others)), others] = -1.0
    return C


def run_bab(
    arch: Any,
    params: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    lo: float,
    hi: float,
    rows: np.ndarray,
    options: BabOptions,
    num_classes: int,
    progress: bool = False,
) -> tuple[dict[int, BabResult], float]:
    """``({row: result}, compile seconds)`` of branch and bound on the examples ``rows`` of ``x``/``y``."""
    if rows.size == 0:
        return {}, 0.0
    from tqdm import tqdm

    bounder = Bounder(arch, params, x.shape[1:], num_classes, options)
    results = {}
    for r in tqdm(rows, desc="bab", disable=not progress, leave=False, file=sys.stderr):
        lower = np.clip(x[r] - np.float32(eps), lo, hi)
        upper = np.clip(x[r] + np.float32(eps), lo, hi)
        results[int(r)] = bab_example(bounder, lower, upper, margin_rows(int(y[r]), num_classes), int(y[r]), options)
    return results, bounder.compile_seconds
