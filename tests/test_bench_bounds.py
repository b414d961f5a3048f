import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench_bounds.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_bounds", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_writes_json_with_throughputs(tmp_path):
    out = tmp_path / "bench.json"
    result = load_bench().main(
        ["--quick", "--relaxations", "ibp,deepz,not-a-relaxation", "--repeats", "2", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["provenance"]["jax"] == saved["jax"]  # versions and commit recorded
    assert saved["config"]["quick"] and saved["config"]["batch"] == 4 and saved["config"]["samples"] == 2
    rows = {(r["relaxation"], r["mode"]): r for r in saved["results"]}
    assert set(rows) == {(r, m) for r in ("ibp", "deepz", "not-a-relaxation") for m in ("single", "vmap")}
    for relaxation in ("ibp", "deepz"):
        for mode, n in (("single", 4), ("vmap", 8)):
            row = rows[relaxation, mode]
            assert row["status"] == "ok", row
            assert row["arch"] == "tiny" and row["repeats"] >= 1
            assert row["median_s"] > 0 and row["throughput"] == pytest.approx(n / row["median_s"])
            assert min(row["times_s"]) <= row["median_s"] <= max(row["times_s"])
    assert rows["not-a-relaxation", "single"]["status"] == "skipped"
    assert "not registered" in rows["not-a-relaxation", "single"]["reason"]
    assert any("not-a-relaxation" in note for note in saved["notes"])


def test_pairs_over_the_memory_limit_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / "bench.json"
    result = load_bench().main(
        ["--quick", "--relaxations", "deepz", "--modes", "single", "--memory-gb", "1e-6", "--out", str(out)]
    )
    (row,) = result["results"]
    assert row["status"] == "skipped" and "estimated memory" in row["reason"]
    assert row["memory_gib"] > 1e-6


def test_bad_flags_are_rejected(tmp_path):
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--archs", "no-such-net", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--batch", "0", "--out", str(tmp_path / "x.json")])
