"""The open domains of one example (host side, numpy): the worst ones first, each split in two.

Every domain travels as a :class:`Domains` batch row: its split vector (:mod:`.layout`) and the bounds it
inherits from its parent — the parent's pre-activation bounds ``[l, u]`` of every ReLU neuron and lower
bounds of every margin row. A child's region (the parent's with one more neuron fixed) is a subset of
its parent's, so whatever holds on the parent holds on the child: the batch program
(:mod:`.bound`) intersects its own bounds with them, and a child is never looser than its parent.

An open domain is kept with its lower bound ``min_k lb_k`` (the worst margin row) and the neuron its
bounding step chose to split. A step takes the ``k`` open domains of lowest lower bound (the ones
furthest from being verified, where a counterexample is most likely) and replaces each by its two
children, the chosen neuron fixed active (+1) in one and inactive (-1) in the other, both inheriting the
parent's bounds:

    children(S, c) = [S with S[r, c_r] = +1 ; S with S[r, c_r] = -1]      (2k rows)

The example is verified once no domain is open: every leaf of the tree has a positive bound or is empty,
and the leaves cover the box (each split covers its parent: z ≥ 0 or z ≤ 0).

Memory: an open domain holds ``N`` int8 splits and ``2N + K`` float32 bounds (``9N + 4K`` bytes; CNN3's
4704 ReLUs: 42 KB).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxcert.bounds.relu_splits import ACTIVE, INACTIVE


class Domains(NamedTuple):
    """A batch of ``M`` domains: split vectors (M, N) int8 and their inherited bounds (float32): the
    pre-activation bounds ``pre_lower``/``pre_upper`` (M, N) and the margin rows' lower bounds ``rows``
    (M, K) (``∓inf``: nothing inherited)."""

    splits: np.ndarray
    pre_lower: np.ndarray
    pre_upper: np.ndarray
    rows: np.ndarray

    def take(self, index: np.ndarray) -> Domains:
        """The domains at ``index`` (an index array or boolean mask)."""
        return Domains(*(v[index] for v in self))

    @property
    def size(self) -> int:
        """The number of domains, ``M``."""
        return int(self.splits.shape[0])


def root(neurons: int, rows: int) -> Domains:
    """The whole box: nothing split, nothing inherited."""
    return Domains(np.zeros((1, neurons), np.int8), np.full((1, neurons), -np.inf, np.float32),
                   np.full((1, neurons), np.inf, np.float32), np.full((1, rows), -np.inf, np.float32))  # fmt: skip


def concat(parts: list[Domains]) -> Domains:
    return Domains(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


class OpenDomains:
    """A pool of open domains (:class:`Domains`) with their lower bounds and chosen neurons."""

    def __init__(self, neurons: int, rows: int) -> None:
        self.domains = root(neurons, rows).take(np.zeros(0, np.int64))
        self.lower = np.zeros(0, np.float64)
        self.choice = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.lower.size)

    def push(self, domains: Domains, lower: np.ndarray, choice: np.ndarray) -> None:
        """Add ``domains`` with their lower bounds and the neurons to split them at."""
        self.domains = concat([self.domains, domains])
        self.lower = np.concatenate([self.lower, np.asarray(lower, np.float64)])
        self.choice = np.concatenate([self.choice, np.asarray(choice, np.int64)])

    def pop_worst(self, k: int) -> tuple[Domains, np.ndarray]:
        """Remove and return the ``k`` domains of lowest lower bound and their chosen neurons (k,)."""
        k = min(k, len(self))
        order = np.argsort(self.lower, kind="stable")
        take, keep = order[:k], order[k:]
        out = self.domains.take(take), self.choice[take]
        self.domains, self.lower, self.choice = self.domains.take(keep), self.lower[keep], self.choice[keep]
        return out

    def min_lower(self) -> float:
        """The lowest lower bound of an open domain (+inf when none is open)."""
        return float(self.lower.min()) if len(self) else float("inf")


def children(parents: Domains, choice: np.ndarray) -> Domains:
    """The 2k children of k domains: the chosen neuron active in the first k, inactive in the last k; both
    inherit their parent's bounds."""
    rows = np.arange(parents.size)
    active, inactive = parents.splits.copy(), parents.splits.copy()
    active[rows, choice] = ACTIVE
    inactive[rows, choice] = INACTIVE
    twice = concat([parents, parents])
    return twice._replace(splits=np.concatenate([active, inactive]))


def pad_rows(domains: Domains, batch: int) -> Domains:
    """``domains`` padded to ``batch`` rows by repeating the first one (the padding's results are dropped)."""
    if domains.size > batch:
        raise ValueError(f"{domains.size} domains do not fit a batch of {batch}")
    return concat([domains, domains.take(np.zeros(batch - domains.size, np.int64))])
