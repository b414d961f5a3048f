"""Bound propagators: pure functions bounding ``C f(x)`` over an input box.

Importing this package registers every relaxation (see :func:`relaxation_names`).
"""

# Modules that register relaxations on import.
from jaxcert.bounds import alpha_crown, crown, crown_ibp, deepz, hbox  # noqa: F401
from jaxcert.bounds.box import check_eps, input_box
from jaxcert.bounds.ibp import ibp_bounds, interval_layers
from jaxcert.bounds.layer_rules import UnsupportedLayerError
from jaxcert.bounds.loss import certified_cross_entropy, cross_entropy, is_certified
from jaxcert.bounds.registry import (
    RelaxationTraits,
    get_relaxation,
    make_bound_fn,
    margin_lower_bounds,
    output_bounds,
    register,
    relaxation_names,
    relaxation_traits,
)
from jaxcert.bounds.spec import fold_spec, margin_spec

__all__ = [
    "RelaxationTraits",
    "UnsupportedLayerError",
    "certified_cross_entropy",
    "check_eps",
    "cross_entropy",
    "fold_spec",
    "get_relaxation",
    "ibp_bounds",
    "input_box",
    "interval_layers",
    "is_certified",
    "make_bound_fn",
    "margin_lower_bounds",
    "margin_spec",
    "output_bounds",
    "register",
    "relaxation_names",
    "relaxation_traits",
]
