"""Provenance of results files: versions, platform and git commit (null outside a checkout, never an error)."""

import json
import shutil
import subprocess
import sys

import jax
import pytest

import jaxcert
from jaxcert.provenance import git_state, package_version, provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_provenance_names_the_versions_python_and_backend():
    info = provenance()
    assert set(info) == {"jaxcert", "jax", "jaxlib", "flax", "optax", "evosax", "python", "platform", "backend",
                         "git_commit", "git_dirty"}  # fmt: skip
    assert info["jaxcert"] == jaxcert.__version__ and info["jax"] == jax.__version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["backend"] == jax.default_backend()
    assert package_version("no-such-distribution-jaxcert") is None
    json.dumps(info)  # JSON-ready


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)  # fmt: skip


@needs_git
def test_git_state_is_the_short_commit_and_whether_tracked_files_changed(tmp_path):
    assert git_state(tmp_path) == (None, None)  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True)
    assert git_state(tmp_path) == (head.stdout.strip(), False)
    (tmp_path / "untracked.txt").write_text("x")
    assert git_state(tmp_path) == (head.stdout.strip(), False)  # untracked files do not count
    (tmp_path / "a.txt").write_text("two")
    assert git_state(tmp_path) == (head.stdout.strip(), True)
    (tmp_path / "sub").mkdir()
    assert git_state(tmp_path / "sub") == (None, None)  # inside a checkout but not its top: e.g. an installed copy


def test_a_failing_git_gives_nulls_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert git_state(tmp_path) == (None, None)
    assert provenance()["git_commit"] is None


@pytest.mark.slow
def test_results_and_certify_json_of_a_run_carry_the_provenance(tiny_run):
    run_dir, _ = tiny_run
    for name in ("results.json", "certify.json"):
        saved = json.loads((run_dir / name).read_text())["provenance"]
        assert saved["jaxcert"] == jaxcert.__version__ and saved["jax"] == jax.__version__, name
        assert {"git_commit", "git_dirty", "platform", "backend"} <= set(saved), name
