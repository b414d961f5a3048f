"""``experiments/profile_cnn7_step.py``: every affine layer's stages timed, thunks attributed to stages."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "profile_cnn7_step.py"


def load():
    spec = importlib.util.spec_from_file_location("profile_cnn7_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["profile_cnn7_step"] = module
    spec.loader.exec_module(module)
    return module


def test_layer_plan_of_cnn7_lists_its_convolutions_and_the_unfolded_dense_layer():
    plan = load().layer_plan("cnn7")
    labels = [load().layer_label(layer) for layer in plan]
    assert labels == [
        "conv 28×28 1→64",
        "conv 28×28 64→64",
        "conv 28×28 64→128 s2",
        "conv 14×14 128→128",
        "conv 14×14 128→128",
        "dense 25088→512",
    ]  # the last Dense is folded into the margins, as the bounds do
    assert [layer["dx"] for layer in plan] == [False, True, True, True, True, True]


HLO = """\
%body.1 (arg: (s32[], f32[3,3,64,64])) -> (s32[], f32[3,3,64,64]) {
  %dot.7 = f32[576,64]{1,0} dot(%a, %b), metadata={op_name="jit(f)/transpose(jvp())/while/x"}
}

ENTRY %main (p: f32[2]) -> f32[2] {
  %ynn_fusion.3 = f32[128,28,28,64]{3,2,1,0} fusion(%x, %w), metadata={op_name="jit(f)/jvp()/conv_general_dilated"}
  %ynn_fusion.4 = f32[128,28,28,64] fusion(%g, %w), metadata={op_name="jit(f)/transpose(jvp())/conv_general_dilated"}
  %while.2 = (s32[], f32[3,3,64,64]{3,2,1,0}) while(%t), condition=%cond.1, body=%body.1
  %add_fusion = f32[128]{0} fusion(%y), kind=kLoop, metadata={op_name="jit(f)/jvp()/add"}
  %dot.9 = f32[128,512]{1,0} dot(%h, %k), metadata={op_name="jit(f)/transpose(jvp())/dot_general"}
}
"""


def test_hlo_instructions_are_attributed_to_their_stage():
    module = load()
    info, body_of = module.hlo_instructions(HLO)
    assert body_of == {"body.1": "while.2"}
    stage = lambda name: module.hlo_stage(name, info, body_of)
    assert stage("dot.7") == "dW conv 64→64 (loop)"
    assert stage("ynn_fusion.3") == "fwd conv (out 28×28×64)"
    assert stage("ynn_fusion.4") == "dx conv (out 28×28×64)"
    assert stage("while.2") == "dW (loop control)"
    assert stage("add_fusion") == "fwd elementwise, loss"
    assert stage("dot.9") == "bwd dense (dx, dW)"


@pytest.mark.slow
def test_quick_profile_times_every_stage_and_traces_the_step(tmp_path):
    out = tmp_path / "profile.json"
    load().main(["--quick", "--repeats", "1", "--trace", "--out", str(out)])
    saved = json.loads(out.read_text())["sides"]["jaxcert"]
    # tiny: Conv(4, 3, s2)-ReLU-Flatten-Dense(8)-ReLU-Dense(10); the first layer has no input gradient
    assert list(saved["stages"]) == [
        "1. conv 8×8 1→4 s2|fwd",
        "1. conv 8×8 1→4 s2|dW",
        "2. dense 64→8|fwd",
        "2. dense 64→8|dW",
        "2. dense 64→8|dx",
    ]
    for entry in [saved["step"], *saved["stages"].values()]:
        assert entry["wall_ms"] > 0 and entry["cpu_ms"] >= 0
    assert saved["step"]["gflop"] > 0 and saved["faults"] >= 0
    assert any(name.startswith("fwd conv") for name in saved["trace"]) and sum(saved["trace"].values()) > 0
    assert "| **whole step** |" in out.with_suffix(".md").read_text()


def test_bad_arguments_are_rejected_before_any_work():
    with pytest.raises(SystemExit):
        load().main(["--batch", "0"])


@pytest.mark.slow
def test_a_baseline_checkout_is_timed_side_by_side_with_its_own_columns(tmp_path):
    """``--baseline DIR`` runs DIR's jaxcert side in its own process (here this checkout again) and adds its CPU
    column and the ratio baseline / jaxcert to every row; a directory without the script fails before any run."""
    module, out = load(), tmp_path / "profile.json"
    module.main(["--quick", "--repeats", "1", "--baseline", str(SCRIPT.parents[1]), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["sides"]) == {"baseline", "jaxcert"} and saved["baseline"] == str(SCRIPT.parents[1])
    assert list(saved["sides"]["baseline"]["stages"]) == list(saved["sides"]["jaxcert"]["stages"])
    table = out.with_suffix(".md").read_text()
    assert "| baseline CPU | CPU baseline / jaxcert |" in table and "Baseline: the jaxcert checkout" in table
    with pytest.raises(SystemExit):
        module.main(["--quick", "--baseline", str(tmp_path), "--out", str(out)])


def test_layer_plan_of_cnn3_lists_its_two_convolutions():
    labels = [load().layer_label(layer) for layer in load().layer_plan("cnn3")]
    assert labels == ["conv 28×28 1→16 s2", "conv 14×14 16→32 s2"]  # its only Dense is folded into the margins
