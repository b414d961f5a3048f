"""``experiments/profile_crown_ibp.py``: every stage of CNN3's CROWN-IBP bound measured, and the per-operation
profile of the whole program adding up to its shares."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load():
    sys.path.insert(0, str(EXPERIMENTS))  # it imports its sibling profile_crown
    spec = importlib.util.spec_from_file_location("profile_crown_ibp", EXPERIMENTS / "profile_crown_ibp.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["profile_crown_ibp"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_stages_and_operations_of_a_small_batch(tmp_path):
    out = tmp_path / "stages.json"
    load().main(["--batch", "2", "--repeats", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    names = [r["stage"] for r in rows]
    assert names[:2] == ["IBP pass", "ReLU relaxations"] and names[-2:] == ["bounds (whole)", "grad (whole)"]
    assert sum("rows back through" in n for n in names) == 5  # Flatten, ReLU, Conv, ReLU, Conv (Normalize: box)
    assert all(r["seconds"] > 0 and r["flops"] >= 0 for r in rows)
    ops = load().main(["--batch", "2", "--repeats", "1", "--ops", "bounds", "--top", "3", "--out", str(out)])["rows"]
    assert 1 <= len(ops) <= 3 and all(0 < r["share"] <= 1 and r["shape"].startswith("f32[") for r in ops)
    assert ops == sorted(ops, key=lambda r: -r["seconds"])


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        load().main(["--batch", "0"])
