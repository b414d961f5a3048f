"""``experiments/profile_crown.py --quick``: every CROWN stage measured, the costs consistent."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "profile_crown.py"


def load():
    spec = importlib.util.spec_from_file_location("profile_crown", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["profile_crown"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_profile_lists_every_stage_with_its_cost(tmp_path):
    out = tmp_path / "profile.json"
    load().main(["--quick", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    stages = [r["stage"] for r in saved["rows"]]
    # tiny: Conv-ReLU-Flatten-Dense-ReLU-Dense; the first ReLU's bounds are interval ones, the second's a pass
    # (then the same pass for the unstable pairs only), then each whole program with every neuron's rows and
    # with the unstable pairs' rows
    assert stages[0] == "intermediate 5 (Dense), whole layer"
    assert stages[1].startswith("intermediate 5 (Dense), unstable pairs (")
    assert stages[2:] == [
        "final (margin rows)",
        "bounds (whole), unstable_rows=False",
        "gradient (whole), unstable_rows=False",
        "bounds (whole), unstable_rows=True",
        "gradient (whole), unstable_rows=True",
    ]
    rows = {r["stage"].removesuffix(", unstable_rows=False"): r for r in saved["rows"]}
    for r in saved["rows"]:
        assert r["flops"] > 0 and r["bytes"] > 0 and r["seconds"] > 0
        assert r["gflops"] == pytest.approx(r["flops"] / r["seconds"] / 1e9)
        assert r["flops_share"] == pytest.approx(r["flops"] / r["seconds"] / saved["peaks"]["flops_per_s"])
    assert rows["gradient (whole)"]["flops"] > rows["bounds (whole)"]["flops"]  # the backward pass costs
    assert saved["peaks"]["flops_per_s"] > 0 and saved["peaks"]["bytes_per_s"] > 0
    assert "| tiny (4) | final (margin rows) |" in out.with_suffix(".md").read_text()


def test_unknown_architectures_are_rejected():
    with pytest.raises(SystemExit):
        load().main(["--archs", "no-such-net"])
