"""Build the API reference (HTML, pdoc) from the docstrings: ``python docs/build_api.py [OUT]`` (default ``docs/api``).

Every module of the ``jaxcert`` package gets a page (a subpackage's ``__all__`` would otherwise hide its
submodules from pdoc). pdoc's warnings (annotations it cannot resolve, names in ``__all__`` that do not
resolve, modules that fail to import, docstring markup it cannot convert) are printed and make the exit status
1, so the tests can require a clean build.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from pathlib import Path

PACKAGE = "jaxcert"


def all_modules(package: str = PACKAGE) -> list[str]:
    """The names of ``package`` and of every module and subpackage below it."""
    root = importlib.import_module(package)
    return [package, *(m.name for m in pkgutil.walk_packages(root.__path__, f"{package}."))]


def module_specs(modules: list[str]) -> list[str]:
    """The module names to give pdoc so that it documents each of ``modules`` once: pdoc adds the submodules
    that a package names in its ``__all__`` by itself, and warns if they are named again."""
    from pdoc.extract import walk_specs

    specs: list[str] = []
    covered: set[str] = set()
    for name in modules:
        if name not in covered:
            specs.append(name)
            covered.update(walk_specs([name]))
    return specs


def fix_namedtuple_modules(modules: list[str]) -> None:
    """Point the generated ``__new__`` of each ``NamedTuple`` of ``modules`` at its class's module, where pdoc
    then resolves the postponed annotations of the constructor (mitmproxy/pdoc#765: otherwise it looks them
    up in the empty module ``namedtuple_<Name>`` and warns)."""
    for name in modules:
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields"):
                if value.__module__ == name:
                    value.__new__.__module__ = name


def build(out: str | Path) -> list[str]:
    """Write the HTML reference to ``out``; returns pdoc's warnings (none: a clean build)."""
    import pdoc
    import pdoc.render

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        modules = all_modules()
        fix_namedtuple_modules(modules)
        pdoc.render.configure(docformat="restructuredtext", footer_text=PACKAGE)
        pdoc.pdoc(*module_specs(modules), output_directory=Path(out))
    return [str(w.message) for w in caught]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default=str(Path(__file__).parent / "api"), help="output folder")
    args = p.parse_args(argv)
    problems = build(args.out)
    for message in problems:
        print(f"warning: {message}", file=sys.stderr)
    print(f"API reference written to {args.out}/index.html ({len(problems)} warnings)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
