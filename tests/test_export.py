"""ONNX export equals jaxcert's forward pass (onnxruntime); VNNLIB properties state the right box and spec."""

import re

import jax
import numpy as np
import pytest

import jaxcert
from jaxcert.export import export_run, main, to_onnx, vnnlib_property
from jaxcert.nets import BatchNorm, Conv, Dense, Flatten, Normalize, ReLU, forward, init_params, mlp
from jaxcert.runs import load_test_split

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _randomise_batch_norm(params, seed=0):
    """Non-trivial running statistics and affine terms, so that the eval-mode formula is exercised."""
    rng = np.random.default_rng(seed)
    out = []
    for p in params:
        if "var" in p:
            p = {k: np.asarray(rng.uniform(0.5, 2.0, v.shape) if k in ("var", "scale") else rng.normal(size=v.shape),
                               np.float32) for k, v in p.items()}  # fmt: skip
        out.append(p)
    return out


NETS = {
    "mlp": (mlp((12, 8), num_classes=3, dataset="mnist"), (5, 5, 1)),
    "mlp_vector": (mlp((6,), num_classes=2, dataset="none"), (10,)),
    "conv_bn": (
        (
            Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)),
            Conv(4, 3, stride=2, padding=1),
            BatchNorm(),
            ReLU(),
            Conv(5, 2, stride=1, padding=0),
            ReLU(),
            Flatten(),
            Dense(7),
            BatchNorm(),
            ReLU(),
            Dense(4),
        ),
        (7, 6, 3),  # H != W: a wrong Flatten order or transposed kernel would show
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("net", sorted(NETS))
def test_onnx_model_computes_the_same_outputs_as_forward(net):
    arch, in_shape = NETS[net]
    params = _randomise_batch_norm(init_params(arch, in_shape, seed=1))
    x = np.random.default_rng(2).uniform(size=(5, *in_shape)).astype(np.float32)
    model = to_onnx(arch, params, in_shape)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(forward(arch, params, x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _parse_vnnlib(text):
    lower = {int(k): float(v) for k, v in re.findall(r"\(assert \(>= X_(\d+) (\S+)\)\)", text)}
    upper = {int(k): float(v) for k, v in re.findall(r"\(assert \(<= X_(\d+) (\S+)\)\)", text)}
    disjuncts = re.findall(r"\(and \(>= Y_(\d+) Y_(\d+)\)\)", text)
    return lower, upper, [(int(a), int(b)) for a, b in disjuncts]


def test_vnnlib_property_is_the_clipped_box_and_the_negated_margin_spec():
    x = np.array([0.0, 0.5, 0.98, 0.3], np.float32)
    text = vnnlib_property(x, label=2, eps=0.05, num_classes=4, lo=0.0, hi=1.0)
    lower, upper, disjuncts = _parse_vnnlib(text)
    assert sorted(lower) == sorted(upper) == [0, 1, 2, 3]
    np.testing.assert_allclose([lower[k] for k in range(4)], np.maximum(x.astype(np.float64) - 0.05, 0.0))
    np.testing.assert_allclose([upper[k] for k in range(4)], np.minimum(x.astype(np.float64) + 0.05, 1.0))
    assert lower[0] == 0.0 and upper[2] == 1.0  # clipped to the input range
    assert sorted(disjuncts) == [(0, 2), (1, 2), (3, 2)]  # some other class >= the label
    assert text.count("(declare-const X_") == 4 and text.count("(declare-const Y_") == 4
    assert text.count("(") == text.count(")")
    with pytest.raises(ValueError, match="label"):
        vnnlib_property(x, label=4, eps=0.05, num_classes=4, lo=0.0, hi=1.0)


@pytest.mark.slow
def test_export_cli_writes_model_properties_and_instances(tiny_run, tmp_path, capsys):
    run_dir, result = tiny_run
    assert main([str(run_dir), "--examples", "3", "--eps", "0.05"]) == 0
    folder = run_dir / "export"
    assert (folder / "instances.csv").read_text().splitlines() == [f"model.onnx,prop_{i}.vnnlib,60" for i in range(3)]
    model = onnx.load(folder / "model.onnx")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ds = load_test_split(jaxcert.load_run(run_dir)[2], limit=3)
    lower, upper, disjuncts = _parse_vnnlib((folder / "prop_1.vnnlib").read_text())
    np.testing.assert_allclose([lower[k] for k in range(10)], ds.x[1].astype(np.float64) - 0.05)  # spheres: no clip
    np.testing.assert_allclose([upper[k] for k in range(10)], ds.x[1].astype(np.float64) + 0.05)
    assert disjuncts == [(1 - int(ds.y[1]), int(ds.y[1]))]
    expected = np.asarray(forward(result["arch"], result["state"].full_params, ds.x))
    np.testing.assert_allclose(session.run(None, {"input": ds.x})[0], expected, atol=1e-5)
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="indices"):
        export_run(run_dir, indices=[10_000])
