"""Mini-batches as numpy arrays, deterministic in ``(seed, epoch)``.

Epoch ``e`` visits the permutation ``default_rng((seed, e)).permutation(N)`` in consecutive chunks of
``batch_size``, so a run resumed at epoch ``e`` (and batch ``start``) sees exactly the batches it
would have seen without the interruption.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxcert.data.dataset import Dataset


def num_batches(ds: Dataset, batch_size: int, drop_last: bool = True) -> int:
    """``N // batch_size`` when dropping the last partial batch, else ``ceil(N / batch_size)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(ds)
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the ``n`` examples."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)


def batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = True,
    start: int = 0,
    rows: slice | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)`` batches of epoch ``epoch``, beginning with batch number ``start``; with ``rows`` only
    those rows of each batch (a process's share of a batch split over several processes).

    Raises ``ValueError`` when ``drop_last`` would leave no batch at all (``batch_size > len(ds)``).
    """
    total = num_batches(ds, batch_size, drop_last)
    if total == 0 and len(ds) > 0:
        raise ValueError(
            f"batch_size {batch_size} is larger than the data set ({len(ds)} examples) and drop_last=True: "
            "no batch would be produced"
        )
    if not 0 <= start <= total:
        raise ValueError(f"start must lie in [0, {total}], got {start}")
    order = epoch_order(len(ds), seed=seed, epoch=epoch, shuffle=shuffle)
    for b in range(start, total):
        idx = order[b * batch_size : (b + 1) * batch_size]
        if rows is not None:
            idx = idx[rows]
        yield ds.x[idx], ds.y[idx]
