import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench_methods.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_methods", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_times_training_steps_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = load_bench().main(["--quick", "--methods", "certified,sabr,rgs:mtl-ibp,nope", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["provenance"]["jaxcert"] and "git_commit" in saved["provenance"]
    assert saved["config"]["quick"] and saved["config"]["batch"] == 8 and saved["config"]["arch"] == "mlp_small"
    rows = {r["method"]: r for r in saved["results"]}
    assert list(rows) == ["certified", "sabr", "rgs:mtl-ibp", "nope"]
    for name in ("certified", "sabr", "rgs:mtl-ibp"):
        row = rows[name]
        assert row["status"] == "ok", row
        assert row["throughput"] == pytest.approx(8 / row["median_s"])
        assert min(row["times_s"]) <= row["median_s"] <= max(row["times_s"])
        assert row["memory_gib"] is None or row["memory_gib"] > 0
    assert rows["rgs:mtl-ibp"]["memory_gib"] > rows["certified"]["memory_gib"]  # two members, and PGD
    assert rows["nope"]["status"] == "skipped" and "unknown method 'nope'" in rows["nope"]["reason"]
    table = capsys.readouterr().out
    assert "| sabr | mlp_small | 8 |" in table and "| certified | mlp_small | 8 |" in table and "1.00" in table
