"""The open domains of one example (host side, numpy): the worst ones first, each split in two.

Every open domain is kept with its split vector (:mod:`.layout`), its lower bound ``min_k lb_k`` (the
worst margin row) and the neuron its bounding step chose to split. A step takes the ``k`` open domains of
lowest lower bound (the ones furthest from being verified, where a counterexample is most likely) and
replaces each by its two children, the chosen neuron fixed active (+1) in one and inactive (-1) in the
other:

    children(S, c) = [S with S[r, c_r] = +1 ; S with S[r, c_r] = -1]      (2k rows)

The example is verified once no domain is open: every leaf of the tree has a positive bound or is empty,
and the leaves cover the box (each split covers its parent: z ≥ 0 or z ≤ 0).
"""

from __future__ import annotations

import numpy as np

from jaxcert.bounds.relu_splits import ACTIVE, INACTIVE


class OpenDomains:
    """A pool of open domains, split vectors (M, N) int8 with their lower bounds and chosen neurons."""

    def __init__(self, neurons: int) -> None:
        self.splits = np.zeros((0, neurons), np.int8)
        self.lower = np.zeros(0, np.float64)
        self.choice = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.lower.size)

    def push(self, splits: np.ndarray, lower: np.ndarray, choice: np.ndarray) -> None:
        """Add domains (rows of ``splits``) with their lower bounds and the neurons to split them at."""
        self.splits = np.concatenate([self.splits, np.asarray(splits, np.int8)])
        self.lower = np.concatenate([self.lower, np.asarray(lower, np.float64)])
        self.choice = np.concatenate([self.choice, np.asarray(choice, np.int64)])

    def pop_worst(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Remove and return the ``k`` domains of lowest lower bound: ``(splits (k, N), choice (k,))``."""
        k = min(k, len(self))
        order = np.argsort(self.lower, kind="stable")
        take, keep = order[:k], order[k:]
        out = self.splits[take], self.choice[take]
        self.splits, self.lower, self.choice = self.splits[keep], self.lower[keep], self.choice[keep]
        return out

    def min_lower(self) -> float:
        """The lowest lower bound of an open domain (+inf when none is open)."""
        return float(self.lower.min()) if len(self) else float("inf")


def children(splits: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """The 2k children of k domains: the chosen neuron active in the first k, inactive in the last k."""
    rows = np.arange(splits.shape[0])
    active, inactive = splits.copy(), splits.copy()
    active[rows, choice] = ACTIVE
    inactive[rows, choice] = INACTIVE
    return np.concatenate([active, inactive])


def pad_rows(splits: np.ndarray, batch: int) -> np.ndarray:
    """``splits`` padded to ``batch`` rows by repeating its first row (the padding's results are dropped)."""
    if splits.shape[0] > batch:
        raise ValueError(f"{splits.shape[0]} domains do not fit a batch of {batch}")
    return np.concatenate([splits, np.repeat(splits[:1], batch - splits.shape[0], axis=0)])
