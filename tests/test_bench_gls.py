"""``experiments/bench_gls.py --quick`` runs end to end and writes a consistent table and JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench_gls.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gls", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_writes_json_and_markdown(tmp_path):
    bench = load_bench()
    result = bench.run(["--quick", "--relaxations", "ibp", "no-such-bound", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_gls.json").read_text())
    assert saved["settings"]["relaxations"] == ["ibp", "no-such-bound"]
    assert saved["provenance"]["jax"] == saved["environment"]["jax"]  # versions and commit recorded
    assert "no-such-bound: not registered, skipped" in saved["notes"]
    (pgpe,) = saved["pgpe"]
    assert pgpe["relaxation"] == "ibp" and pgpe["population"] == 4
    assert pgpe["loop_s"] > 0 and pgpe["loop_extrapolated"]  # 2 of 4 members timed
    for schedule in ("vmap", "chunked", "default"):  # one vmap, lax.map over chunks of 2, the backend's rule
        assert pgpe[f"{schedule}_s"] > 0
        assert abs(pgpe[f"{schedule}_speedup"] - pgpe["loop_s"] / pgpe[f"{schedule}_s"]) < 1e-9
    (rgs,) = saved["rgs"]
    assert rgs["samples"] == 2 and rgs["chunk"] == 2
    for schedule in ("vmap", "chunked", "default"):
        assert abs(rgs[f"{schedule}_ratio"] - rgs[f"{schedule}_s"] / rgs["plain_s"]) < 1e-9
    table = (tmp_path / "bench_gls.md").read_text()
    assert "| ibp | 4 |" in table and "| ibp | 2 |" in table and "no-such-bound" in table
    assert "skipped" not in table.split("## Notes")[0]
    assert result["pgpe"][0]["population"] == 4


def test_a_program_larger_than_the_memory_budget_is_reported_and_shown_as_skipped():
    import jax
    import jax.numpy as jnp

    bench = load_bench()
    double = jax.jit(lambda a: 2 * a)
    _, why = bench.check_memory(double, (jnp.ones(1024),), budget=100.0)
    assert "GiB budget" in why
    _, why = bench.check_memory(double, (jnp.ones(1024),), budget=1e9)
    assert why == ""
    row = {
        "relaxation": "deeppoly", "population": 256, "chunk": 1, "loop_s": 30.0, "loop_extrapolated": True,
        "vmap_skipped": why or "needs 977 GiB > 14 GiB budget", "vmap_compile_s": 2.0,
        "chunked_s": 20.0, "chunked_speedup": 1.5, "chunked_compile_s": 3.0,
        "default_skipped": "estimated 90 s per call > 60 s limit",
    }  # fmt: skip
    result = {
        "settings": {"arch": "cnn3", "in_shape": [28, 28, 1], "batch": 128, "repeats": 3, "chunk": 1},
        "environment": {"device": "cpu", "cpu_count": 2, "load_average": 0.0},
        "pgpe": [row], "rgs": [], "notes": ["deeppoly, population 256, vmap: skipped (too large)"],
    }  # fmt: skip
    table = bench.markdown(result)
    expected = "| deeppoly | 256 | skipped: needs 977 GiB > 14 GiB budget | 20.000 | skipped: estimated 90 s per call"
    assert expected in table
    assert "| 30.000 (extrapolated) | – | 1.50x | – | 2.0 / 3.0 / – |" in table
    assert "- deeppoly, population 256, vmap: skipped (too large)" in table
