"""Relaxations by name, and the pure functions ``(params, x, eps, C) -> (lower, upper)`` built on them.

Every relaxation is a function ``fn(arch, params, lower, upper, C=None, **options) -> (lb, ub)``
bounding ``C f(x)`` over the box ``[lower, upper]``. Register new ones with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax

from jaxcert.bounds.box import input_box
from jaxcert.bounds.checks import check_input
from jaxcert.bounds.ibp import ibp_bounds
from jaxcert.bounds.layer_rules import UnsupportedLayerError
from jaxcert.bounds.spec import batch_margin_spec
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


_REGISTRY: dict[str, tuple[Relaxation, dict[str, Any]]] = {}
#: Relaxations with the option ``bound_upper`` (False: only lower bounds are back-substituted).
_ONE_SIDED: set[str] = set()


def register(name: str, fn: Relaxation, *, one_sided: bool = False, **defaults: Any) -> None:
    """Register ``fn`` under ``name`` with default options (a variant is the same fn, other defaults).

    ``one_sided=True`` declares that ``fn`` takes ``bound_upper=False`` (lower bounds only, the upper
    bound being a cheap sound one), which :func:`margin_lower_bounds` then passes.
    """
    _REGISTRY[name] = (fn, defaults)
    if one_sided:
        _ONE_SIDED.add(name)
    else:
        _ONE_SIDED.discard(name)


def is_one_sided(name: str) -> bool:
    """True if the relaxation ``name`` can skip its upper bounds (option ``bound_upper=False``)."""
    return name in _ONE_SIDED


def relaxation_names() -> list[str]:
    return sorted(_REGISTRY)


def get_relaxation(name: str) -> Relaxation:
    """The relaxation ``name`` with its registered default options bound. A layer kind without a rule the
    relaxation needs raises :class:`jaxcert.bounds.layer_rules.UnsupportedLayerError` naming ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown relaxation {name!r}; known: {', '.join(relaxation_names())}")
    fn, defaults = _REGISTRY[name]

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


register("ibp", ibp_bounds)
register("box", ibp_bounds)
