"""The rule table: which bound rules each non-affine layer kind provides, and a lookup that raises.

Affine layers (``spec.is_affine``) are handled generically by every relaxation through ``linear``,
``abs_linear`` and ``offset``, merges (``spec.is_merge``: ``Add``) by the graph drivers
(:mod:`jaxcert.nets.graph`); a driver that does not know merges meets ``Add`` here and raises. An
activation layer needs a *rule* per relaxation step, looked up here by the layer's exact class (a
subclass of ReLU with another ``apply`` is another kind, not ReLU):

    interval   ``(l, u) -> (l', u')`` interval image (IBP, CROWN's forward pass, CROWN-IBP, loss fusion)
    lines      ``(l, u, rule, *, slopes, tau, gamma) -> ReluLines``: lower line ``α x`` and upper line
               ``s x + t`` (CROWN family, CROWN-IBP, loss fusion, alpha-CROWN)
    slopes     ``(lines, α, l, u) -> ReluLines`` with optimised lower slopes (alpha-CROWN, Lee et al.)
    backward   ``(A, a, lines) -> (A, a)`` through the layer on dense rows (back-substitution)
    window     ``(A, a, α, s, t) -> (A, a)`` on window rows (patches mode)
    deepz      ``HybridZonotope -> HybridZonotope`` (DeepZ)
    hbox       ``HybridZonotope -> HybridZonotope`` (hBox)
    milp       the name of the encoding :mod:`jaxcert.bounds.exact` builds ("relu": triangle LP / big-M MILP)
    onnx       the ONNX operator type, or ``(type, attributes)`` (:mod:`jaxcert.export`)

An entry may depend on the layer's fields (LeakyReLU's slope ``a``): a :class:`PerLayer` entry is made
for the layer by :func:`rule_for`, so the drivers call every rule with the signatures above.

A relaxation that meets a non-affine layer kind without the rule it needs raises
:class:`UnsupportedLayerError` at trace time, naming the kind and the rule; there is no fallback (an
unknown activation relaxed as a ReLU would give unsound bounds, silently). The registry
(:func:`jaxcert.bounds.get_relaxation`) adds the relaxation's name to the message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jaxcert.bounds import leaky_relu_rules, relu_rules
from jaxcert.bounds.relu_slopes import relu_lines, with_lower_slope
from jaxcert.nets.layers import Arch, LayerSpec, LeakyReLU, ReLU

#: Every rule name a layer kind may provide (see the module doc).
RULE_NAMES = ("interval", "lines", "slopes", "backward", "window", "deepz", "hbox", "milp", "onnx")


class PerLayer(NamedTuple):
    """A table entry that depends on the layer's fields: :func:`rule_for` returns ``make(spec)``."""

    make: Callable[[LayerSpec], Any]


def _with_slope(rule: Callable[..., Any]) -> PerLayer:
    """``rule`` bound to the layer's ``slope`` as ``negative_slope=`` (LeakyReLU's parametrised rules)."""
    return PerLayer(lambda spec: functools.partial(rule, negative_slope=spec.slope))


#: Layer kind (exact class) -> rule name -> implementation (or a :class:`PerLayer` making it).
RULES: dict[type[LayerSpec], Mapping[str, Any]] = {
    ReLU: {
        "interval": relu_rules.relu_interval,
        "lines": relu_lines,
        "slopes": with_lower_slope,
        "backward": relu_rules.backward_relu,
        "window": relu_rules.backward_relu_window,
        "deepz": relu_rules.deepz_relu,
        "hbox": relu_rules.hbox_relu,
        "milp": "relu",
        "onnx": "Relu",
    },
    # y = max(x, a x): the interval map and CROWN's lines (ReLU's mapped, see leaky_relu_rules); the back-
    # substitution rules only use the lines, so they are ReLU's. No "slopes" (alpha-CROWN projects onto
    # [0, 1], unsound below a), no "deepz"/"hbox"/"milp": those relaxations raise.
    LeakyReLU: {
        "interval": _with_slope(leaky_relu_rules.leaky_relu_interval),
        "lines": _with_slope(leaky_relu_rules.leaky_relu_lines),
        "backward": relu_rules.backward_relu,
        "window": relu_rules.backward_relu_window,
        "onnx": PerLayer(lambda spec: ("LeakyRelu", {"alpha": float(spec.slope)})),
    },
}


class UnsupportedLayerError(ValueError):
    """A relaxation met a non-affine layer kind without the rule it needs (see the module doc)."""

    def __init__(self, kind: str, rule: str, where: str, relaxation: str | None = None):
        self.kind, self.rule, self.where, self.relaxation = kind, rule, where, relaxation
        known = ", ".join(sorted(k.__name__ for k, rules in RULES.items() if rule in rules)) or "none"
        who = f"relaxation {relaxation!r}" if relaxation else where
        super().__init__(
            f"{who} has no rule for layer kind {kind!r} (needs its {rule!r} rule in {where}; kinds with one: "
            f"{known}; see jaxcert.bounds.layer_rules)"
        )

    def for_relaxation(self, relaxation: str) -> UnsupportedLayerError:
        """The same error, its message naming the registered relaxation."""
        return UnsupportedLayerError(self.kind, self.rule, self.where, relaxation)


def layer_kind(spec: LayerSpec) -> str:
    """The kind of a layer: its class name."""
    return type(spec).__name__


def has_rule(spec: LayerSpec, rule: str) -> bool:
    """Whether the non-affine layer ``spec`` provides ``rule``."""
    _check_rule_name(rule)
    return rule in RULES.get(type(spec), {})


def rule_for(spec: LayerSpec, rule: str, where: str) -> Any:
    """The implementation of ``rule`` for the non-affine layer ``spec``; :class:`UnsupportedLayerError`
    (naming the kind, the rule and ``where``, the function that needs it) if the kind has none."""
    if spec.is_affine:
        raise ValueError(f"{where}: layer {spec!r} is affine; affine layers have no per-kind rules")
    if not has_rule(spec, rule):
        raise UnsupportedLayerError(layer_kind(spec), rule, where)
    entry = RULES[type(spec)][rule]
    return entry.make(spec) if isinstance(entry, PerLayer) else entry


def activation_indices(arch: Arch, rule: str, where: str) -> list[int]:
    """Indices of the activation layers of ``arch`` (neither affine nor a merge: ``Add`` is handled by the
    graph drivers, :mod:`jaxcert.nets.graph`), each checked to provide ``rule`` (see :func:`rule_for`)."""
    out = []
    for i, spec in enumerate(arch):
        if not spec.is_affine and not spec.is_merge:
            rule_for(spec, rule, where)
            out.append(i)
    return out


def _check_rule_name(rule: str) -> None:
    if rule not in RULE_NAMES:
        raise ValueError(f"unknown rule name {rule!r}; known: {', '.join(RULE_NAMES)}")
