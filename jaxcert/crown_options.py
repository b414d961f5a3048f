"""The options of the CROWN family as one frozen, validated record: :class:`CrownOptions` (imports no JAX).

The CROWN-family relaxations (``crown`` and its slope variants, ``crown-ibp``, ``alpha-crown``,
``alpha-crown-full``, ``crown-lee``) take their options as keyword arguments, each relaxation the subset in
its signature (:func:`jaxcert.bounds.registry.accepted_options`). This record is the boundary where they
are set from outside — configs (``TrainConfig.relaxation_options``), the command lines
(``--relaxation-option NAME=VALUE``), certify's reports — and checked once, before any set-up work:

    option                 values                       what it does (docs/relaxations.md)
    lower_slope, init      adaptive | zero | one | ...  lower-slope rule of crossing ReLUs (init: alpha-CROWN's start)
    tau                    (0, 1]                       width of the "-c" ramps
    gamma                  >= 0                         sharpness of the "soft" rule
    intersect_ibp          bool                         intersect CROWN's intermediate bounds with IBP's
    unstable_budget        int >= 1                     rows for at most k unstable neurons per layer (looser)
    unstable_rows          true | false | auto          rows for the unstable (example, neuron) pairs only (exact)
    unstable_chunk         int >= 1                     unstable pairs per chunk of such a pass (exact)
    patches                true | false | auto          convolutional rows as windows (exact)
    max_rows_bytes         int >= 1                     rows back-substituted in chunks of this size (exact)
    bound_upper            bool                         false: lower bounds only (margins need no more)
    steps                  int >= 0                     alpha-CROWN's ascent steps
    lr                     > 0                          alpha-CROWN's learning rate
    lr_decay               (0, 1]                       alpha-CROWN's learning rate × this after each step
    intermediate           crown | ibp                  alpha-CROWN / crown-lee pre-activation bounds
    optimize_intermediate  bool                         alpha-CROWN: optimise the intermediate slopes too

A field left ``None`` is not set: the relaxation keeps its own (registered) default. :meth:`kwargs_for`
converts the record to the keyword arguments a relaxation takes today.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: The lower-slope rules a command line or config can name (:data:`jaxcert.bounds.relu_slopes.LOWER_SLOPE_RULES`;
#: "given" needs per-neuron arrays, so only the Python API sets it).
LOWER_SLOPE_RULES = ("adaptive", "zero", "one", "parallel", "zero-c", "one-c", "soft")
#: Pre-activation bounds of alpha-CROWN and crown-lee.
INTERMEDIATE = ("crown", "ibp")

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _one_of(*values: Any) -> Callable[[Any], bool]:
    return lambda v: any(v is w if isinstance(w, bool) else (not isinstance(v, bool) and v == w) for w in values)


#: Per option: (what it must be, for the error message; the check; how a string from a command line parses).
_RULES: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "lower_slope": (f"one of {', '.join(LOWER_SLOPE_RULES)}", _one_of(*LOWER_SLOPE_RULES), "str"),
    "init": (f"one of {', '.join(LOWER_SLOPE_RULES)}", _one_of(*LOWER_SLOPE_RULES), "str"),
    "tau": ("a number in (0, 1]", lambda v: _is_real(v) and 0 < v <= 1, "float"),
    "gamma": ("a finite number >= 0", lambda v: _is_real(v) and v >= 0, "float"),
    "intersect_ibp": ("true or false", lambda v: isinstance(v, bool), "bool"),
    "unstable_budget": ("an int >= 1", lambda v: _is_int(v) and v >= 1, "int"),
    "unstable_rows": ("true, false or auto", _one_of(True, False, "auto"), "bool|auto"),
    "unstable_chunk": ("an int >= 1 (pairs)", lambda v: _is_int(v) and v >= 1, "int"),
    "patches": ("true, false or auto", _one_of(True, False, "auto"), "bool|auto"),
    "max_rows_bytes": ("an int >= 1 (bytes)", lambda v: _is_int(v) and v >= 1, "int"),
    "bound_upper": ("true or false", lambda v: isinstance(v, bool), "bool"),
    "steps": ("an int >= 0", lambda v: _is_int(v) and v >= 0, "int"),
    "lr": ("a finite number > 0", lambda v: _is_real(v) and v > 0, "float"),
    "lr_decay": ("a number in (0, 1]", lambda v: _is_real(v) and 0 < v <= 1, "float"),
    "intermediate": (f"one of {', '.join(INTERMEDIATE)}", _one_of(*INTERMEDIATE), "str"),
    "optimize_intermediate": ("true or false", lambda v: isinstance(v, bool), "bool"),
}


@dataclasses.dataclass(frozen=True)
class CrownOptions:
    """Options of the CROWN family (see the module doc); ``None``: the relaxation's default. Invalid values
    raise a one-line ``ValueError`` naming the option."""

    lower_slope: str | None = None
    init: str | None = None
    tau: float | None = None
    gamma: float | None = None
    intersect_ibp: bool | None = None
    unstable_budget: int | None = None
    unstable_rows: bool | str | None = None
    unstable_chunk: int | None = None
    patches: bool | str | None = None
    max_rows_bytes: int | None = None
    bound_upper: bool | None = None
    steps: int | None = None
    lr: float | None = None
    lr_decay: float | None = None
    intermediate: str | None = None
    optimize_intermediate: bool | None = None

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            what, ok, _ = _RULES[name]
            if not ok(value):
                raise ValueError(f"relaxation option {name} must be {what}, got {value!r}")
        if self.optimize_intermediate and self.intermediate == "ibp":
            raise ValueError("relaxation option optimize_intermediate=true needs intermediate=crown, not ibp")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option name, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> CrownOptions:
        """The record of ``{name: value}``; a string value for a non-string option is parsed as on the command
        line (config files, YAML). Unknown names raise one ``ValueError`` listing the known ones."""
        if not isinstance(options, Mapping):
            raise ValueError(f"relaxation_options must be a mapping of option names to values, got {options!r}")
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise ValueError(
                f"unknown relaxation option(s) {', '.join(map(str, unknown))}; known: {', '.join(cls.names())}"
            )
        return cls(
            **{name: _parse(name, value) if isinstance(value, str) else value for name, value in options.items()}
        )

    @classmethod
    def parse(cls, items: Iterable[str]) -> CrownOptions:
        """The record of command-line items ``NAME=VALUE`` (a later item overrides an earlier one)."""
        options: dict[str, str] = {}
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"a relaxation option is NAME=VALUE (e.g. unstable_budget=64), got {item!r}")
            options[name.strip().replace("-", "_")] = value.strip()
        return cls.from_dict(options)

    def to_dict(self) -> dict[str, Any]:
        """The options that are set (not ``None``), JSON-serialisable: what configs and reports record."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def kwargs_for(self, accepted: Iterable[str]) -> dict[str, Any]:
        """The keyword arguments for a relaxation that takes the options ``accepted``: the set ones it takes."""
        accepted = frozenset(accepted)
        return {name: value for name, value in self.to_dict().items() if name in accepted}


def _parse(name: str, text: str) -> Any:
    """``text`` (a command-line value) as option ``name`` takes it; unparsable text is a ``ValueError``
    (a parsed value out of range is left to the record's check)."""
    what, _, kind = _RULES[name]
    word = text.strip().lower()
    if kind == "str":
        return text.strip()
    if "bool" in kind and word in _TRUE + _FALSE:
        return word in _TRUE
    if kind == "bool|auto" and word == "auto":
        return "auto"
    number = {"int": int, "float": float}.get(kind)
    if number is not None:
        try:
            return number(word)
        except ValueError:
            pass
    raise ValueError(f"relaxation option {name} must be {what}, got {text!r}")


def relaxation_option_help() -> str:
    """One line per option for ``--help``: ``name: what it must be``."""
    return "; ".join(f"{name}: {_RULES[name][0]}" for name in CrownOptions.names())
