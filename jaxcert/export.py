"""Export for the verification ecosystem: a network as ONNX, robustness properties as VNNLIB.

``python -m jaxcert.export RUN_DIR --examples N`` writes ``RUN_DIR/export/``: ``model.onnx``,
``prop_<i>.vnnlib`` for the first N test examples (or ``--indices``) and ``instances.csv``
(``onnx,vnnlib,timeout`` rows, as in VNN-COMP benchmarks).

ONNX graph (opset 17): the input keeps jaxcert's layout — ``(batch, H, W, C)`` for images, ``(batch, d)``
for vectors — so that the VNNLIB variable ``X_k`` is the k-th entry of the input flattened in that
order. Layer by layer:

    Normalize   Div(std), Add(-mean / std)                (per channel)
    Dense       Gemm: x W + b
    Conv        Transpose to NCHW (once), Conv (OIHW kernel, pads, strides), activations stay NCHW
    ReLU        Relu
    LeakyReLU   LeakyRelu(alpha = slope)
    Flatten     Transpose back to NHWC (if NCHW), Flatten: the NHWC order of jaxcert's Flatten
    BatchNorm   Mul(scale / sqrt(var + eps)), Add(bias - mean · scale / sqrt(var + eps))  (eval mode)
    AvgPool     Transpose to NCHW (once), AveragePool(kernel_shape, strides, no padding)
    Add         Add of the two nodes' tensors (the shortcut transposed first if its layout differs)

VNNLIB property of example ``(x, y)`` at radius ε: the input box and the *negation* of robustness
(a verifier proves the network robust by showing this is unsatisfiable):

    lo_k = max(x_k - ε, lo),  hi_k = min(x_k + ε, hi)          (assert (>= X_k lo_k)) (assert (<= X_k hi_k))
    ∨_{j ≠ y} Y_j ≥ Y_y                                         (assert (or (and (>= Y_j Y_y)) ...))

``onnx`` is an optional dependency (``pip install onnx``; the dev extras include it and onnxruntime).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxcert.cli import OneLineParser, command_name, one_line_warnings

OPSET = 17
IR_VERSION = 8


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ImportError(
            "jaxcert.export needs the onnx package: pip install onnx (or pip install -e '.[dev]')"
        ) from err
    return onnx


class _Graph:
    """Nodes and constants of the graph being built, with fresh tensor names."""

    def __init__(self) -> None:
        self.onnx = _onnx()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, value: np.ndarray, stem: str) -> str:
        name = self.name(stem)
        array = np.asarray(value, np.float32)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attrs: Any) -> str:
        out = self.name(stem)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _channel_shape(values: np.ndarray, layout: str) -> np.ndarray:
    """Per-channel constants shaped to broadcast over the channel axis of the current layout."""
    return values.reshape(-1, 1, 1) if layout == "nchw" else values.reshape(-1)


_PERMUTATIONS = {("nhwc", "nchw"): [0, 3, 1, 2], ("nchw", "nhwc"): [0, 2, 3, 1]}


def _to_layout(g: _Graph, h: str, layout: str, target: str) -> str:
    """The tensor ``h`` (in ``layout``) transposed to ``target`` (a no-op when equal)."""
    return h if layout == target else g.node("Transpose", [h], f"to_{target}", perm=_PERMUTATIONS[layout, target])


def to_onnx(arch: tuple, params: list, in_shape: tuple[int, ...], *, name: str = "jaxcert") -> Any:
    """The ``onnx.ModelProto`` computing ``forward(arch, params, x)`` for inputs of shape (batch, *in_shape)."""
    from jaxcert.nets.graph import walk_forward
    from jaxcert.nets.network import check_params, shapes

    onnx = _onnx()
    check_params(tuple(arch), params)
    n_out = shapes(tuple(arch), tuple(in_shape))[-1]  # checks the graph first
    g = _Graph()

    def step(i: int, spec: Any, node: tuple[str, str]) -> tuple[str, str]:
        return _layer_node(g, spec, {k: np.asarray(v, np.float32) for k, v in params[i].items()}, *node)

    def merge(node: tuple[str, str], skip: tuple[str, str]) -> tuple[str, str]:
        (h, layout), (s, skip_layout) = node, skip
        return g.node("Add", [h, _to_layout(g, s, skip_layout, layout)], "residual"), layout

    h, _ = walk_forward(tuple(arch), ("input", "nhwc" if len(in_shape) == 3 else "flat"), step, merge)
    g.nodes.append(onnx.helper.make_node("Identity", [h], ["output"], name="output"))
    graph = onnx.helper.make_graph(
        g.nodes,
        name,
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", *in_shape])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", *n_out])],
        g.initializers,
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="jaxcert", ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def _layer_node(g: _Graph, spec: Any, p: dict[str, np.ndarray], h: str, layout: str) -> tuple[str, str]:
    """The ONNX nodes of one (non-merge) layer on the tensor ``h`` in ``layout``: ``(output, its layout)``."""
    from jaxcert.bounds.layer_rules import rule_for
    from jaxcert.nets.layers import AvgPool, BatchNorm, Conv, Dense, Flatten, Normalize

    if not spec.is_affine:  # by the layer kind's "onnx" rule (its operator type); no rule: an error
        op = rule_for(spec, "onnx", "to_onnx")
        op, attrs = (op, {}) if isinstance(op, str) else op
        h = g.node(op, [h], op.lower(), **attrs)
    elif isinstance(spec, Normalize):
        std, mean = np.asarray(spec.std, np.float32), np.asarray(spec.mean, np.float32)
        h = g.node("Div", [h, g.const(_channel_shape(std, layout), "std")], "normalize")
        h = g.node("Add", [h, g.const(_channel_shape(-mean / std, layout), "shift")], "normalize")
    elif isinstance(spec, Dense):
        h = g.node("Gemm", [h, g.const(p["kernel"], "kernel"), g.const(p["bias"], "bias")], "dense")
    elif isinstance(spec, Conv):
        h, layout = _to_layout(g, h, layout, "nchw"), "nchw"
        kernel = np.transpose(p["kernel"], (3, 2, 0, 1))  # HWIO -> OIHW
        pads, strides = [spec.padding] * 4, [spec.stride] * 2
        h = g.node(
            "Conv",
            [h, g.const(kernel, "kernel"), g.const(p["bias"], "bias")],
            "conv",
            pads=pads,
            strides=strides,
            kernel_shape=[spec.kernel, spec.kernel],
        )
    elif isinstance(spec, AvgPool):
        h, layout = _to_layout(g, h, layout, "nchw"), "nchw"
        size, stride = [spec.window] * 2, [spec.step] * 2
        h = g.node("AveragePool", [h], "avgpool", kernel_shape=size, strides=stride)
    elif isinstance(spec, Flatten):
        h = _to_layout(g, h, layout, "nhwc") if layout == "nchw" else h
        h = g.node("Flatten", [h], "flatten", axis=1)
        layout = "flat"
    elif isinstance(spec, BatchNorm):
        gain = p["scale"] / np.sqrt(p["var"] + np.float32(spec.eps))
        h = g.node("Mul", [h, g.const(_channel_shape(gain, layout), "bn_gain")], "batchnorm")
        h = g.node("Add", [h, g.const(_channel_shape(p["bias"] - p["mean"] * gain, layout), "bn_shift")], "bn")
    else:
        raise ValueError(f"cannot export layer {spec!r} to ONNX")
    return h, layout


def input_box_f64(x: np.ndarray, eps: float, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """``(max(x - ε, lo), min(x + ε, hi))`` flattened, in float64."""
    x = np.asarray(x, np.float64).reshape(-1)
    return np.maximum(x - eps, lo), np.minimum(x + eps, hi)


def vnnlib_property(x: np.ndarray, label: int, eps: float, num_classes: int, lo: float, hi: float) -> str:
    """The VNNLIB text of "some class j ≠ label scores ≥ the label on the clipped ε-box around x"."""
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside [0, {num_classes})")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    lower, upper = input_box_f64(x, eps, lo, hi)
    lines = [f"; robustness of label {label} at linf radius {eps!r} (negated: a model is a counterexample)"]
    lines += [f"(declare-const X_{k} Real)" for k in range(lower.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    for k, (a, b) in enumerate(zip(lower, upper, strict=True)):
        lines += [f"(assert (>= X_{k} {float(a)!r}))", f"(assert (<= X_{k} {float(b)!r}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label)
    lines.append(f"(assert (or {others}))")
    return "\n".join(lines) + "\n"


def export_run(run_dir: str | Path, *, examples: int = 10, indices: list[int] | None = None,
               eps: float | None = None, timeout: float = 60.0, out: str | Path | None = None) -> Path:  # fmt: skip
    """Write the run's ONNX model, VNNLIB properties and ``instances.csv``; returns the folder."""
    from jaxcert.runs import data_shape, load_run, load_test_split

    arch, params, config = load_run(run_dir)
    in_shape, num_classes, _, (lo, hi) = data_shape(config)
    eps = config.test_eps if eps is None else eps
    if indices is None:
        if examples < 1:
            raise ValueError(f"--examples must be >= 1, got {examples}")
        indices = list(range(examples))
    ds = load_test_split(config, limit=max(indices) + 1)
    if max(indices) >= len(ds) or min(indices) < 0:
        raise ValueError(f"example indices must lie in [0, {len(ds)}), got {indices}")
    folder = Path(out) if out is not None else Path(run_dir) / "export"
    folder.mkdir(parents=True, exist_ok=True)
    _onnx().save(to_onnx(arch, params, in_shape, name=Path(run_dir).name), folder / "model.onnx")
    rows = []
    for i in indices:
        text = vnnlib_property(ds.x[i], int(ds.y[i]), eps, num_classes, lo, hi)
        (folder / f"prop_{i}.vnnlib").write_text(text)
        rows.append(f"model.onnx,prop_{i}.vnnlib,{timeout:g}")
    (folder / "instances.csv").write_text("\n".join(rows) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=command_name("jaxcert.export"), description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("run_dir", help="a training run folder (the --out of python -m jaxcert.train)")
    p.add_argument("--examples", type=int, default=10, help="properties for the first N test examples")
    p.add_argument("--indices", help="comma list of test example indices (instead of --examples)")
    p.add_argument("--eps", type=float, help="radius (default: the run's evaluation eps)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-instance timeout written to instances.csv")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    args = p.parse_args(argv)
    try:
        indices = None if args.indices is None else [int(v) for v in args.indices.split(",") if v.strip()]
        folder = export_run(args.run_dir, examples=args.examples, indices=indices, eps=args.eps,
                            timeout=args.timeout, out=args.out)  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"written {folder}/model.onnx, {folder}/instances.csv and the VNNLIB properties")
    return 0


if __name__ == "__main__":
    with one_line_warnings():
        sys.exit(main())
