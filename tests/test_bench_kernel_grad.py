"""``experiments/bench_kernel_grad.py``: every kernel-gradient variant checked against XLA's, timed, counted."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench_kernel_grad.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_kernel_grad", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernel_grad"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_layers_are_cnn7s_and_cnn3s_convolutions_once_each():
    labels = [layer["label"] for layer in load().conv_layers(128)]
    assert labels == [
        "cnn7 28×28 1→64",
        "cnn7 28×28 64→64",
        "cnn7 28×28 64→128 s2",
        "cnn7 14×14 128→128",
        "cnn3 28×28 1→16 s2 k5",
        "cnn3 14×14 16→32 s2 k4",
    ]
    with_cnn5 = [layer["label"] for layer in load().conv_layers(128, ("cnn7", "cnn3", "cnn5"))]
    assert with_cnn5 == [*labels, "cnn5 28×28 1→16", "cnn5 28×28 16→16 s2 k4"]  # its third = CNN3's second


@pytest.mark.slow
def test_quick_run_times_every_variant_and_writes_json_and_table(tmp_path):
    names = [
        "xla",
        "im2col-scan",
        "gt-scan:2",
        "gt-halves:1",
        "cf-scan:2",
        "taps-nhwc",
        "taps-cf",
        "flat-nhwc",
        "stacked-cf",
    ]
    out = tmp_path / "kg.json"
    result = load().main(["--quick", "--rounds", "1", "--repeats", "1", "--hlo", "--variants", ",".join(names),
                          "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert rows == result["rows"] and len(rows) == 2 * len(names)  # the variants' gradients matched XLA's
    assert all(row["cpu_ms"] >= 0 and row["wall_ms"] > 0 for row in rows)
    by = {(row["layer"], row["variant"]): row for row in rows}
    for layer in ("quick 8×8 4→8", "quick 8×8 4→8 s2"):
        assert by[layer, "gt-scan:2"]["ynn"] == 1 and by[layer, "gt-scan:2"]["eigen_dot"] == 0
        assert by[layer, "cf-scan:2"]["ynn"] == 1 and by[layer, "cf-scan:2"]["eigen_dot"] == 0
        assert by[layer, "gt-halves:1"]["ynn"] == 2  # one product per half's loop
        assert by[layer, "im2col-scan"]["eigen_dot"] == 1 and by[layer, "im2col-scan"]["ynn"] == 0
        assert by[layer, "taps-cf"]["ynn"] == 9  # one product per kernel offset
    table = out.with_suffix(".md").read_text()
    assert "| quick 8×8 4→8 s2 | gt-scan:2 |" in table and "CPU vs im2col-scan" in table


def test_hlo_facts_count_thunks_outside_fused_computations():
    text = """\
%fused_computation (p: f32[4]) -> f32[4] {
  %copy.1 = f32[4]{0} copy(%p)
  ROOT %dot.2 = f32[2,2]{1,0} dot(%a, %b), lhs_contracting_dims={1}
}

ENTRY %main (x: f32[4]) -> f32[2,2] {
  %slice_bitcast_fusion.3 = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_computation
  %ynn_fusion = f32[2,2]{1,0} fusion(%x), kind=kCustom, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  ROOT %dot.5 = f32[2,2]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""
    assert load().hlo_facts(text) == {"ynn": 1, "eigen_dot": 1, "convolution": 0, "copies": 1}


def test_an_unknown_variant_fails_before_compiling(tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'winograd'"):
        load().main(["--quick", "--variants", "xla,winograd", "--out", str(tmp_path / "x.json")])
