"""``experiments/bench_reference.py``: the jaxcert side end to end, the side-by-side bookkeeping, and (only
where torch is importable: CI has none) the reference script's weight conversion."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load(name):
    sys.path.insert(0, str(EXPERIMENTS))  # the reference script imports its sibling peak_memory
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_without_a_reference_times_the_jaxcert_side_only(tmp_path):
    out = tmp_path / "ref.json"
    result = load("bench_reference").main(["--quick", "--rounds", "1", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["reference"] is None and saved["rounds"] == 1 and saved["provenance"]["jax"]
    assert [r["name"] for r in saved["rows"]] == [r["name"] for r in result["rows"]]
    for row in saved["rows"]:
        j = row["jaxcert"]
        assert "reference" not in row and "ratio" not in row
        assert j["throughput"] == pytest.approx(row["batch"] * row["members"] / j["seconds"]), row
        assert j["peak_gib"] > 0 and j["rounds"] == 1
    table = out.with_suffix(".md").read_text()
    assert "no reference: jaxcert side only" in table and "| tiny-gls-crown-ibp |" in table


@pytest.mark.slow
def test_a_baseline_checkout_runs_side_by_side_with_its_own_code(tmp_path):
    out = tmp_path / "ref.json"
    root = EXPERIMENTS.parent  # this checkout as its own baseline: both columns, a ratio near 1
    args = ["--quick", "--rows", "tiny-ibp-bounds", "--rounds", "1", "--repeats", "1", "--baseline", str(root)]
    load("bench_reference").main([*args, "--out", str(out)])
    saved = json.loads(out.read_text())
    (row,) = saved["rows"]
    assert saved["baseline"] == str(root) and row["baseline"]["throughput"] > 0 and row["jaxcert"]["throughput"] > 0
    assert row["vs_baseline"] == pytest.approx(row["jaxcert"]["throughput"] / row["baseline"]["throughput"])
    assert "jaxcert / baseline" in out.with_suffix(".md").read_text()


def test_rows_and_flags_are_checked_before_any_work(tmp_path):
    bench = load("bench_reference")
    with pytest.raises(SystemExit):
        bench.main(["--rows", "cnn3-ibp-bounds,no-such-row"])
    with pytest.raises(SystemExit):
        bench.main(["--reference", str(tmp_path / "no-venv")])
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])
    with pytest.raises(SystemExit):  # not a jaxcert checkout
        bench.main(["--baseline", str(tmp_path)])
    names = [r.name for r in bench.ROWS]
    assert len(names) == len(set(names)) == 15  # the table of issue 19, the GLS rows and CNN3 full CROWN training


def test_the_best_round_counts_and_errors_are_reported():
    bench = load("bench_reference")
    rounds = [
        {"rows": [{"name": "a", "throughput": 10.0, "peak_gib": 1.0}, {"name": "b", "error": "ValueError: x"}]},
        {"rows": [{"name": "a", "throughput": 12.0, "peak_gib": 1.1}, {"name": "b", "error": "ValueError: y"}]},
    ]
    a = bench.best(rounds, "a")
    assert a["throughput"] == 12.0 and a["rounds"] == 2 and a["all_throughputs"] == [10.0, 12.0]
    assert bench.best(rounds, "b") == {"error": "ValueError: x"}
    assert bench.best(rounds, "c") is None


def test_only_layers_with_a_pytorch_twin_are_exported():
    from jaxcert.nets import BatchNorm, Dense, Flatten, ReLU

    bench = load("bench_reference")
    spec = bench.arch_spec((Flatten(), Dense(4), ReLU(), Dense(2)), (2, 3, 1))
    assert spec[0] == {"kind": "Flatten", "in_shape": [2, 3, 1]} and spec[1] == {"kind": "Dense", "features": 4}
    with pytest.raises(ValueError, match=r"BatchNorm.*no PyTorch twin"):
        bench.arch_spec((Flatten(), Dense(4), BatchNorm(), Dense(2)), (2, 3, 1))


@pytest.mark.parametrize("arch", ["tiny", "cnn3"])
def test_converted_weights_reproduce_jaxcert_logits(tmp_path, arch):
    pytest.importorskip("torch")
    bench, reference = load("bench_reference"), load("reference_lirpa")
    case = reference.load_case(bench.write_case(tmp_path / "case.npz", arch, 8))
    model = reference.build_model(case["spec"], case["weights"])
    assert reference.check_forward(model, case, 1e-5) <= 1e-5
    # the HWC -> CHW permutation of the Dense after Flatten is what makes them agree
    flat = next(i for i, layer in enumerate(case["spec"]) if layer["kind"] == "Flatten")
    wrong = dict(case["weights"])
    h, w, c = case["spec"][flat]["in_shape"]
    k = wrong[f"{flat + 1}.kernel"]
    wrong[f"{flat + 1}.kernel"] = k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(k.shape)  # CHW rows
    with pytest.raises(ValueError, match="disagree with jaxcert"):
        reference.check_forward(reference.build_model(case["spec"], wrong), case, 1e-5)


def test_dense_after_flatten_reads_hwc_rows_in_chw_order():
    pytest.importorskip("torch")
    reference = load("reference_lirpa")
    h, w, c, out = 2, 3, 4, 5
    kernel = np.random.default_rng(0).normal(size=(h * w * c, out))
    x_hwc = np.random.default_rng(1).normal(size=(h, w, c))
    converted = reference.dense_after_flatten(kernel, (h, w, c))
    np.testing.assert_allclose(converted @ x_hwc.transpose(2, 0, 1).reshape(-1), x_hwc.reshape(-1) @ kernel)


def test_short_calls_are_timed_for_at_least_a_second_and_long_ones_within_the_budget():
    timed_call_count = load("timed_calls").timed_call_count
    assert timed_call_count(3, 0.005, 60.0) == 200  # a 5 ms step: a second of calls, not 3
    assert timed_call_count(3, 0.5, 60.0) == 3  # long calls: the requested repeats
    assert timed_call_count(3, 30.0, 60.0) == 2  # within the time budget ...
    assert timed_call_count(3, 100.0, 60.0) == 1  # ... but always one
