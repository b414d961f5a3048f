"""Relaxations by name, and the pure functions ``(params, x, eps, C) -> (lower, upper)`` built on them.

Every relaxation is a function ``fn(arch, params, lower, upper, C=None, **options) -> (lb, ub)``
bounding ``C f(x)`` over the box ``[lower, upper]``. Register new ones with :func:`register`, declaring
their :class:`RelaxationTraits` (cost rank, one-sided, β-mixable, fusable, interval); every question about
a relaxation (``is_one_sided``, ``is_beta_mixable``, ``relaxation_cost``, ...) is answered from there.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

import jax

from jaxcert.bounds.box import input_box
from jaxcert.bounds.checks import check_input
from jaxcert.bounds.ibp import ibp_bounds
from jaxcert.bounds.layer_rules import UnsupportedLayerError
from jaxcert.bounds.spec import batch_margin_spec
from jaxcert.crown_options import CrownOptions
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams


class Relaxation(Protocol):
    def __call__(
        self,
        arch: Arch,
        params: LayerParams,
        lower: jax.Array,
        upper: jax.Array,
        C: jax.Array | None = None,
        **options: Any,
    ) -> tuple[jax.Array, jax.Array]: ...


@dataclasses.dataclass(frozen=True)
class RelaxationTraits:
    """What callers may ask of a relaxation without running it, declared once at :func:`register`.

    ``cost``: rough cost rank, the order of a certification cascade (cheapest first) and of the stages of
    :mod:`jaxcert.certify`: 0 interval (IBP), 1 hybrid box, 2 CROWN-IBP (one backward pass of the output
    rows), 3 zonotope, 4 CROWN/DeepPoly (one backward pass per ReLU layer, :data:`CROWN_COST`), 5-6 optimised
    slopes. Relaxations of rank below :data:`CROWN_COST` are *cheap*: certify runs them before the attacks
    and on whole batches.
    ``one_sided``: takes ``bound_upper=False`` (lower bounds only, the upper bound a cheap sound one), which
    :func:`margin_lower_bounds` then passes.
    ``beta_mixable``: takes ``beta`` ∈ [0, 1], the share of its bound in a convex mixture with IBP's, which
    training recipes schedule (``beta_final``).
    ``fusable``: has a fused certified loss (:mod:`jaxcert.bounds.loss_fusion`, option ``loss_fusion``).
    ``interval``: *is* interval bound propagation (what TAPS bounds its feature extractor with).
    """

    cost: int
    one_sided: bool = False
    beta_mixable: bool = False
    fusable: bool = False
    interval: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.cost, bool) or not isinstance(self.cost, int) or self.cost < 0:
            raise ValueError(f"cost must be a non-negative int rank, got {self.cost!r}")
        for name in ("one_sided", "beta_mixable", "fusable", "interval"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


#: Cost rank of CROWN/DeepPoly: relaxations below it are cheap (see :class:`RelaxationTraits`).
CROWN_COST = 4


class _Entry(NamedTuple):
    fn: Relaxation
    defaults: dict[str, Any]
    traits: RelaxationTraits


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, fn: Relaxation, *, traits: RelaxationTraits, **defaults: Any) -> None:
    """Register ``fn`` under ``name`` with its :class:`RelaxationTraits` and default options (a variant is
    the same fn with other defaults). Registering a name again replaces it."""
    if not isinstance(traits, RelaxationTraits):
        raise TypeError(f"register({name!r}, ...): traits must be a RelaxationTraits, got {traits!r}")
    unknown = set(defaults) - accepted_by(fn)
    if unknown:
        raise ValueError(f"register({name!r}, ...): {fn.__name__} takes no option(s) {', '.join(sorted(unknown))}")
    _REGISTRY[name] = _Entry(fn, defaults, traits)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown relaxation {name!r}; known: {', '.join(relaxation_names())}")
    return _REGISTRY[name]


def relaxation_traits(name: str) -> RelaxationTraits:
    """The traits ``name`` was registered with (``ValueError`` for an unknown name)."""
    return _entry(name).traits


def is_one_sided(name: str) -> bool:
    """True if the relaxation ``name`` can skip its upper bounds (option ``bound_upper=False``)."""
    return relaxation_traits(name).one_sided


def is_beta_mixable(name: str) -> bool:
    """True if ``name`` takes the scheduled IBP mixing weight ``beta`` (CROWN-IBP)."""
    return relaxation_traits(name).beta_mixable


def is_fusable(name: str) -> bool:
    """True if ``name`` has a fused certified loss (``loss_fusion``)."""
    return relaxation_traits(name).fusable


def is_interval(name: str) -> bool:
    """True if ``name`` is interval bound propagation itself (``ibp``, ``box``)."""
    return relaxation_traits(name).interval


def relaxation_cost(name: str) -> int:
    """The cost rank of ``name`` (:class:`RelaxationTraits`)."""
    return relaxation_traits(name).cost


def is_cheap(name: str) -> bool:
    """Cost rank below CROWN's: no per-neuron back-substitution (certify runs it before the attacks)."""
    return relaxation_cost(name) < CROWN_COST


def cheapest_first(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` ordered by cost rank (stable: equal ranks keep their order)."""
    return tuple(sorted(names, key=relaxation_cost))


def relaxations_with(trait: str) -> tuple[str, ...]:
    """The names whose boolean trait ``trait`` (e.g. ``"fusable"``) is true, in registration order."""
    if trait not in {f.name for f in dataclasses.fields(RelaxationTraits)} - {"cost"}:
        raise ValueError(f"unknown boolean relaxation trait {trait!r}")
    return tuple(name for name, entry in _REGISTRY.items() if getattr(entry.traits, trait))


def accepted_by(fn: Relaxation) -> frozenset[str]:
    """The keyword-only options of the relaxation function ``fn`` (its signature after ``*``)."""
    params = inspect.signature(fn).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def accepted_options(name: str) -> frozenset[str]:
    """The options the relaxation ``name`` takes (the keyword-only parameters of its function)."""
    return accepted_by(_entry(name).fn)


def options_by_relaxation(names: Iterable[str], options: CrownOptions | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per relaxation of ``names``, the keyword arguments of ``options`` (a :class:`CrownOptions` or its
    dict) that it takes; every relaxation gets the options it takes and ignores the others. An option that
    none of ``names`` takes is a ``ValueError`` naming it and them (a typo'd intent, not a silent no-op)."""
    record = options if isinstance(options, CrownOptions) else CrownOptions.from_dict(options)
    names = tuple(dict.fromkeys(names))
    per_name = {name: record.kwargs_for(accepted_options(name)) for name in names}
    used = {option for kwargs in per_name.values() for option in kwargs}
    unused = [option for option in record.to_dict() if option not in used]
    if unused:
        raise ValueError(
            f"relaxation option(s) {', '.join(unused)} taken by none of the relaxations {', '.join(names)}"
        )
    return per_name


def relaxation_names() -> list[str]:
    return sorted(_REGISTRY)


def get_relaxation(name: str) -> Relaxation:
    """The relaxation ``name`` with its registered default options bound. A layer kind without a rule the
    relaxation needs raises :class:`jaxcert.bounds.layer_rules.UnsupportedLayerError` naming ``name``."""
    fn, defaults, _ = _entry(name)

    def bound(arch, params, lower, upper, C=None, **options):  # type: ignore[no-untyped-def]
        try:
            return fn(arch, params, lower, upper, C, **{**defaults, **options})
        except UnsupportedLayerError as err:  # name the relaxation, not only the function that needed the rule
            raise err.for_relaxation(name) from err

    return bound


def output_bounds(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    eps: float | jax.Array,
    *,
    relaxation: str = "ibp",
    C: jax.Array | None = None,
    lo: float = 0.0,
    hi: float = 1.0,
    **options: Any,
) -> tuple[jax.Array, jax.Array]:
    """Bounds of ``C f(x')`` for all ``x'`` in the clipped ε-ball around ``x``."""
    fn = get_relaxation(relaxation)
    check_input(arch, params, x)
    lower, upper = input_box(x, eps, lo, hi)
    return fn(arch, params, lower, upper, C, **options)


def margin_lower_bounds(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    relaxation: str = "ibp",
    **options: Any,
) -> jax.Array:
    """Lower bounds of the margins ``z_y - z_j`` (j ≠ y), shape (B, n-1).

    Only lower bounds are needed, so relaxations that can (:func:`is_one_sided`) skip their upper rows.
    """
    C = batch_margin_spec(arch, params, x, y)
    if is_one_sided(relaxation):
        options = {"bound_upper": False, **options}
    return output_bounds(arch, params, x, eps, relaxation=relaxation, C=C, **options)[0]


def make_bound_fn(arch: Arch, relaxation: str = "ibp", **options: Any) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The pure function ``(params, x, eps, C=None) -> (lower, upper)`` for a fixed architecture.

    It is ``jax.jit``-able and ``jax.vmap``-able over a leading axis of parameter samples, e.g.
    ``jax.vmap(fn, in_axes=(0, None, None, None))``.
    """
    get_relaxation(relaxation)  # fail early on an unknown name

    def bound_fn(params: LayerParams, x: jax.Array, eps: float | jax.Array, C: jax.Array | None = None):
        return output_bounds(arch, params, x, eps, relaxation=relaxation, C=C, **options)

    return bound_fn


register("ibp", ibp_bounds, traits=RelaxationTraits(cost=0, interval=True))
register("box", ibp_bounds, traits=RelaxationTraits(cost=0, interval=True))
