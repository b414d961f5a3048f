"""The API reference builds from the docstrings with pdoc, without a warning, one page per module."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_api_reference_builds_without_warnings_and_documents_every_module(tmp_path):
    pytest.importorskip("pdoc")
    out = tmp_path / "api"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "docs/build_api.py", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "warning" not in proc.stderr.lower(), proc.stderr[-3000:]
    assert "(0 warnings)" in proc.stdout
    modules = [p.relative_to(ROOT).with_suffix("") for p in (ROOT / "jaxcert").rglob("*.py")]
    pages = {str(m).removesuffix("/__init__") for m in modules if m.name != "__main__"}
    missing = sorted(p for p in pages if not (out / f"{p}.html").is_file())
    assert not missing, missing
    top = (out / "jaxcert.html").read_text()
    assert "load_run" in top and "newest readable checkpoint" in top  # the lazy top-level function, documented
    crown = (out / "jaxcert" / "bounds" / "crown.html").read_text()
    assert "crown_bounds" in crown
