"""Packaging: the licence, the typing marker, the console commands and their exit codes."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: What pip's generated console script runs (the return value of ``main`` becomes the exit status).
WRAPPER = "import sys; from {module} import {function}; sys.argv[0] = {name!r}; sys.exit({function}())"


def test_the_licence_is_the_apache_2_text_that_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0" and "LICENSE" in PYPROJECT["project"]["license-files"]
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Copyright 2026 The jaxcert authors" in text and "[yyyy]" not in text


def test_the_package_is_marked_typed_and_ships_the_marker():
    assert (ROOT / "jaxcert" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["jaxcert"]


def test_the_console_commands_point_at_the_main_functions_of_the_three_command_lines():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts == {
        "jaxcert-train": "jaxcert.train.__main__:main",
        "jaxcert-certify": "jaxcert.certify:main",
        "jaxcert-export": "jaxcert.export:main",
    }
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    module, function = PYPROJECT["project"]["scripts"][name].split(":")
    code = WRAPPER.format(module=module, function=function, name=name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.slow
def test_the_console_commands_exit_with_the_status_main_returns(tmp_path):
    missing = str(tmp_path / "missing")
    for name in ("jaxcert-certify", "jaxcert-export"):
        done = _run_script(name, missing)
        assert done.returncode == 2 and "does not exist" in done.stderr, (name, done.stderr[-2000:])
    bad = _run_script("jaxcert-train", "--config", "nope")
    assert bad.returncode == 2 and "unknown config 'nope'" in bad.stderr
    good = _run_script("jaxcert-train", "--config", "tiny", "--print-config")
    assert good.returncode == 0 and '"name": "tiny"' in good.stdout


def test_usage_and_error_hints_name_the_command_the_user_ran(monkeypatch):
    from jaxcert.cli import command_name

    monkeypatch.setattr(sys, "argv", ["/venv/bin/jaxcert-train", "--steps", "abc"])
    assert command_name("jaxcert.train") == "jaxcert-train"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/jaxcert-certify"])
    assert command_name("jaxcert.certify") == "jaxcert-certify" and command_name("jaxcert.export") == (
        "python -m jaxcert.export"
    )
    monkeypatch.setattr(sys, "argv", ["/work/jaxcert/train/__main__.py"])  # python -m jaxcert.train
    assert command_name("jaxcert.train") == "python -m jaxcert.train"
    bad = _run_script("jaxcert-train", "--steps", "abc")
    assert bad.returncode == 2 and bad.stderr.strip().endswith("(see jaxcert-train --help)"), bad.stderr
