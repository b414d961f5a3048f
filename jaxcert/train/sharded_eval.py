"""Evaluation of a multi-process run, split over the processes.

The test batches are dealt round-robin: process ``i`` of ``P`` evaluates the batches ``b ≡ i (mod P)``,
each with the batch key ``fold_in(key(seed), b)`` that a single process would use, so every example gets
the same clean / PGD / certified verdict as in :func:`jaxcert.evaluate.evaluate`. The counts are summed over
the processes,

    acc_k = Σ_i hits_{k,i} / Σ_i n_i,

which equals the one-process result on the same parameters. Every process passes the full parameters
(host copies, e.g. from :func:`jaxcert.train.distributed.to_host`) and gets the same dictionary back.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxcert.data.dataset import Dataset
from jaxcert.evaluate import evaluate_per_example
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams


def evaluate_sharded(arch: Arch, params: LayerParams, ds: Dataset, eps: float, **options: Any) -> dict[str, float]:
    """:func:`jaxcert.evaluate.evaluate` (same keyword ``options``) with the batches split over the processes."""
    part = (jax.process_index(), jax.process_count())
    per_example = evaluate_per_example(arch, params, ds, eps, part=part, **options)
    keys = list(per_example)
    local = np.array([*(int(per_example[k].sum()) for k in keys), len(per_example[keys[0]])], np.int32)
    total = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, local.size).sum(axis=0)
    return {k: float(total[i] / total[-1]) for i, k in enumerate(keys)}
