"""Shared command-line plumbing of ``python -m jaxcert.train / certify / export`` (imports no JAX).

Every error of a command is one line on stderr, ``error: ...``, with exit status 2; a warning meant for the
person running it is one line, ``warning: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn


def command_name(module: str) -> str:
    """How the user ran the command: ``jaxcert-train`` for the console command of ``jaxcert.train`` (and so
    on), else ``python -m <module>`` — the name usage lines and error hints show."""
    console = "jaxcert-" + module.removeprefix("jaxcert.")
    return console if Path(sys.argv[0]).name == console else f"python -m {module}"


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (a bad flag value, a missing argument) are one line, not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


class OneLineWarning(RuntimeWarning):
    """A warning for the person running a command: shown as one ``warning: ...`` line by
    :func:`one_line_warnings` (elsewhere, an ordinary ``RuntimeWarning``)."""


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, :class:`OneLineWarning` s print as ``warning: MESSAGE`` (one line, no source line)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, OneLineWarning):
            print(f"warning: {one_line(str(message))}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
