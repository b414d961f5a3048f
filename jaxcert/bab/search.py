"""Branch and bound on one example: the loop that ends in verified / falsified / unknown / timeout.

From the root domain (the whole input box, nothing split), each step bounds a batch of domains in one
jitted program (:mod:`.bound`; each child inherits its parent's bounds unless ``options.inherit`` is
False) and then, on the host (:mod:`.domains`):

    falsified   an attack point of the batch has a negative margin (the forward pass of the program;
                :mod:`jaxcert.certify` checks it again before reporting it);
    closed      a domain whose worst margin row has lower bound > 0, or whose splits leave no point;
    open        every other domain, split next at its chosen neuron (:mod:`.branching`).

An open domain with no crossing neuron left (every neuron split or stable, yet its bound not positive:
fixing intermediate bounds does not enforce the splits' constraints in the back-substitution) is settled
exactly by the LP of :mod:`.linear_leaf`: closed, or its minimiser checked as a counterexample by a
forward pass (a failed check, float rounding at the boundary, ends the search as unknown).

It ends **verified** when no domain is open, **unknown** when the next step would bound more than
``max_domains`` domains, and **timeout** when ``timeout`` seconds have passed (checked after each step;
compilation is excluded: :class:`Bounder` compiles ahead of time).

``lower`` of the result is a sound lower bound of the example's smallest margin over the box: the
minimum over the leaves of the tree (closed and open) of their bounds (empty leaves excluded).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.attacks.pgd import classification_margin
from jaxcert.bab.bound import DomainBounds, jitted_bound_domains
from jaxcert.bab.domains import Domains, OpenDomains, children, pad_rows, root
from jaxcert.bab.layout import split_layout, total_neurons
from jaxcert.bab.linear_leaf import LeafBound, solve_leaf
from jaxcert.bab.options import BabOptions, check_bab_options
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward


class BabResult(NamedTuple):
    """The outcome of :func:`bab_example`."""

    state: str  # "verified", "falsified", "unknown" or "timeout"
    lower: float  # a sound lower bound of min_j (f_y - f_j) over the box (nan if none was computed)
    x: np.ndarray | None  # the counterexample when falsified
    domains: int  # domains bounded
    seconds: float


class Bounder:
    """The batch program (:func:`jaxcert.bab.bound.bound_domains`) compiled ahead of time for one network,
    input shape and ``options.batch`` (``compile_seconds``), the leaf LP and a forward margin check."""

    def __init__(
        self, arch: Arch, params: LayerParams, in_shape: tuple[int, ...], num_classes: int, options: BabOptions
    ) -> None:
        check_bab_options(options)
        self.arch, self.params, self.options = arch, params, options
        self.layout = split_layout(tuple(arch[:-1]), tuple(in_shape))
        self.neurons = total_neurons(self.layout)
        began = time.monotonic()
        f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
        self.rows = num_classes - 1
        batch, neurons = options.batch, self.neurons
        self._compiled = jitted_bound_domains.lower(
            arch, params, f32(*in_shape), f32(*in_shape), f32(self.rows, num_classes),
            jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((batch, neurons), jnp.int8),
            f32(batch, neurons), f32(batch, neurons), f32(batch, self.rows),
            layout=self.layout, alpha_steps=options.alpha_steps, attack_steps=options.attack_steps,
        ).compile()  # fmt: skip
        self.compile_seconds = time.monotonic() - began
        self._margin = jax.jit(lambda x, y: classification_margin(forward(arch, params, x), y))

    def bound(self, lower: Any, upper: Any, C: Any, y: int, domains: Domains | np.ndarray) -> DomainBounds:
        """The batch program on ``options.batch`` domains (:class:`~jaxcert.bab.domains.Domains`, or bare
        split vectors (batch, N) that inherit nothing), as numpy arrays."""
        if not isinstance(domains, Domains):
            splits = np.asarray(domains, np.int8)
            free = root(self.neurons, self.rows).take(np.zeros(splits.shape[0], np.int64))
            domains = free._replace(splits=splits)
        out = self._compiled(self.params, np.asarray(lower, np.float32), np.asarray(upper, np.float32),
                             np.asarray(C, np.float32), np.int32(y), *domains)  # fmt: skip
        return DomainBounds(*(np.asarray(v) for v in out))

    def leaf(self, lower: Any, upper: Any, C: Any, splits: np.ndarray, active: np.ndarray) -> LeafBound:
        """:func:`jaxcert.bab.linear_leaf.solve_leaf` on one domain with no crossing neuron."""
        return solve_leaf(self.arch, self.params, self.layout, lower, upper, C, splits, active)

    def margin(self, x: np.ndarray, y: int) -> float:
        """``f(x)_y - max_{j≠y} f(x)_j`` by a forward pass (matmul precision "highest")."""
        with jax.default_matmul_precision("highest"):
            return float(self._margin(np.asarray(x, np.float32)[None], np.asarray([y]))[0])


def bab_example(
    bounder: Bounder,
    lower: np.ndarray,
    upper: np.ndarray,
    C: np.ndarray,
    y: int,
    options: BabOptions,
    clock: Callable[[], float] = time.monotonic,
) -> BabResult:
    """Branch and bound on the box ``[lower, upper]`` (*input) of an example with label ``y`` and margin
    spec ``C`` (K, outputs) (see the module doc)."""
    began = clock()
    batch = options.batch
    pool = OpenDomains(bounder.neurons, bounder.rows)
    closed_lower = np.inf
    domains = 0
    todo = root(bounder.neurons, bounder.rows)
    while True:
        out = bounder.bound(lower, upper, C, y, pad_rows(todo, batch))
        k = todo.size
        domains += k
        worst = out.lower[:k].min(axis=1)
        hit = np.flatnonzero(out.margin[:k] < 0)
        if hit.size:
            return BabResult("falsified", float("nan"), out.x[hit[0]], domains, clock() - began)
        closed = (worst > 0) | out.empty[:k]
        real = ~out.empty[:k]
        for r in np.flatnonzero(~closed & ~out.has_choice[:k]):  # no crossing neuron left: the leaf LP
            leaf = bounder.leaf(lower, upper, C, todo.splits[r], out.active[r])
            if leaf.status == "open":
                if bounder.margin(leaf.x, y) < 0:
                    return BabResult("falsified", float("nan"), leaf.x, domains, clock() - began)
                bound_now = min(closed_lower, float(worst[~closed].min()), pool.min_lower())
                return BabResult("unknown", bound_now, None, domains, clock() - began)
            closed[r], real[r], worst[r] = True, leaf.status == "verified", leaf.lower
        if np.any(closed & real):
            closed_lower = min(closed_lower, float(worst[closed & real].min()))
        if options.inherit:  # what the children inherit: this step's bounds (already the parent's ∩ own)
            todo = Domains(todo.splits, out.pre_lower[:k], out.pre_upper[:k], out.lower[:k])
        pool.push(todo.take(~closed), worst[~closed], out.choice[:k][~closed])
        bound_now = min(closed_lower, pool.min_lower())
        if not len(pool):
            return BabResult("verified", bound_now, None, domains, clock() - began)
        if clock() - began > options.timeout:
            return BabResult("timeout", bound_now, None, domains, clock() - began)
        parents = min(len(pool), batch // 2)
        if domains + 2 * parents > options.max_domains:
            return BabResult("unknown", bound_now, None, domains, clock() - began)
        todo = children(*pool.pop_worst(parents))
