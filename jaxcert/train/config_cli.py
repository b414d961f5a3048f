"""Command-line flags generated from :class:`TrainConfig`, config files, and default output folders.

Every dataclass field ``some_field`` becomes the flag ``--some-field``, typed from its annotation:

    int / float / str        the value;  ``... | None`` fields also accept ``none``
    bool                     ``--some-field`` / ``--no-some-field``
    tuple[T, ...]            a comma list, e.g. ``--lr-decay-fracs 0.8,0.9`` (empty string: ``()``)
    dict (relaxation_options)  one repeatable ``--relaxation-option NAME=VALUE`` per item
                             (:class:`jaxcert.crown_options.CrownOptions`; set over the recipe's and the file's)

The help text is the field's ``metadata["help"]``, else the comment after the field in the class body.
Absent flags leave the field alone, so the precedence is: named config < ``--config-file`` < flags.
This module imports no JAX (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxcert.crown_options import CrownOptions, relaxation_option_help
from jaxcert.train.configs import TrainConfig, annotation_parts, check_field, describe_type

_SCALARS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}
_NONE_WORDS = ("none", "null")


@functools.cache
def field_help() -> dict[str, str]:
    """Help text of every field: ``metadata["help"]`` or the trailing ``# comment`` in the class source."""
    comments: dict[str, str] = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        match = re.match(r"^\s+(\w+):[^=]+=[^#]*#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return {f.name: f.metadata.get("help") or comments.get(f.name, "") for f in dataclasses.fields(TrainConfig)}


def field_parser(annotation: str) -> tuple[Callable[[str], Any] | None, str]:
    """``(parse, metavar)`` of a field annotation (a string, as written in the class); ``parse`` is
    ``None`` for ``bool`` (an on/off flag). Raises ``TypeError`` for an annotation it cannot parse."""
    text = annotation.replace(" ", "")
    optional = text.endswith("|None")
    text = text.removesuffix("|None")
    tuple_match = re.fullmatch(r"tuple\[(\w+),\.\.\.\]", text)
    if text == "bool" and not optional:
        return None, ""
    if tuple_match and tuple_match.group(1) in _SCALARS:
        item = _SCALARS[tuple_match.group(1)]
        parse: Callable[[str], Any] = lambda s: tuple(item(v.strip()) for v in s.split(",") if v.strip())
        metavar = f"{tuple_match.group(1).upper()},..."
    elif text in _SCALARS:
        parse, metavar = _SCALARS[text], text.upper()
    else:
        raise TypeError(f"no command-line parser for a field annotated {annotation!r}")
    if optional:
        inner = parse
        parse = lambda s: None if s.strip().lower() in _NONE_WORDS else inner(s)
        metavar += "|none"
    return _named(parse, metavar.lower()), metavar


def _named(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """``parse`` under a readable name (argparse puts the type's name into its error messages)."""

    def typed(s: str) -> Any:
        return parse(s)

    typed.__name__ = name
    return typed


#: Mapping fields: one repeatable ``--FLAG NAME=VALUE`` each (the flag names one item, the field holds them all).
MAPPING_FLAGS = {"relaxation_options": "--relaxation-option"}


def flag_name(field: str) -> str:
    """``--some-field`` for ``some_field`` (a mapping field: its one-item flag, :data:`MAPPING_FLAGS`)."""
    return MAPPING_FLAGS.get(field) or "--" + field.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per :class:`TrainConfig` field; absent flags are absent from the namespace."""
    helps = field_help()
    for f in dataclasses.fields(TrainConfig):
        common = {"dest": f.name, "default": argparse.SUPPRESS, "help": helps[f.name] or None}
        if f.name in MAPPING_FLAGS:
            help_ = f"{helps[f.name]}. Options: {relaxation_option_help()}"
            parser.add_argument(
                MAPPING_FLAGS[f.name], action="append", metavar="NAME=VALUE", **{**common, "help": help_}
            )
            continue
        parse, metavar = field_parser(str(f.type))
        if parse is None:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(flag_name(f.name), type=parse, metavar=metavar, **common)


def config_fields(namespace: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line (as parsed values; ``--relaxation-option`` items as the
    dict of :class:`jaxcert.crown_options.CrownOptions`, a later item overriding an earlier one)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    fields = {k: v for k, v in vars(namespace).items() if k in names}
    if "relaxation_options" in fields:
        fields["relaxation_options"] = CrownOptions.parse(fields["relaxation_options"]).to_dict()
    return fields


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Config fields from a JSON file (``.yaml``/``.yml``: YAML, if PyYAML is installed); lists become
    tuples; unknown fields are a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write it as JSON") from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config fields: {', '.join(unknown)}")
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    return {k: file_value(path, k, types[k], v) for k, v in data.items()}


def file_value(path: Path, field: str, annotation: str, value: Any) -> Any:
    """A config-file value as the field takes it: lists become tuples, and a string for a non-string field is
    parsed like the field's flag (YAML reads ``1e-3`` as a string). A value of the wrong type (or a string it
    cannot parse) is a ``ValueError`` naming the file and the field."""
    if field in MAPPING_FLAGS:
        try:
            return CrownOptions.from_dict(value).to_dict()
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    kind, _, is_tuple = annotation_parts(annotation)
    parse, _ = field_parser(annotation)
    if isinstance(value, list):
        value = tuple(value)
    elif isinstance(value, str) and parse is not None and (kind != "str" or is_tuple):
        try:
            value = parse(value)
        except ValueError:
            raise ValueError(f"{path}: {field} must be {describe_type(annotation)}, got {value!r}") from None
    try:
        check_field(field, annotation, value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
    return value


def default_out(config: TrainConfig, overrides: dict[str, Any]) -> str:
    """Output folder of a run without ``--out``: the recipe's own folder when nothing is overridden, else
    ``runs/<name>-<method>-<relaxation>-<hash of the overrides>`` (deterministic: the same command maps to
    the same folder, so rerunning it resumes; different overrides never share a folder). ``<method>`` is
    :attr:`TrainConfig.method_label`: GLS of a state-of-the-art objective reads e.g. ``rgs-sabr``."""
    changes = {k: v for k, v in overrides.items() if k != "out"}
    if not changes:
        return config.out
    digest = hashlib.sha256(json.dumps(changes, sort_keys=True, default=list).encode()).hexdigest()[:8]
    return f"runs/{config.name}-{config.method_label}-{config.relaxation}-{digest}"
