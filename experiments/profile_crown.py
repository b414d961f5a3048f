"""Roofline profile of the full CROWN pass (lower margins, windows) and its gradient, stage by stage.

The stages of ``margin_lower_bounds(..., relaxation="crown")`` (:mod:`jaxcert.bounds.crown`):

* ``intermediate <i>``: the back-substitution of every neuron of ReLU input ``i`` (layer index in the
  body: the net without its last Dense, folded into the margin spec) through the layers before it, given
  the relaxations of the earlier ReLUs (:func:`jaxcert.bounds.crown.neuron_bounds`, "whole layer"), and
  of its unstable (example, neuron) pairs only (:mod:`jaxcert.bounds.pair_rows`, "unstable pairs"; the
  stage names how many pairs of the batch are unstable and how many chunks of pairs ran: XLA's cost
  analysis counts a loop's body once, so its FLOPs are those of one chunk);
* ``final``: the margin rows ``C W`` back-substituted through the whole body;
* ``bounds (whole)``: the whole bound as one program (the sum of the stages plus IBP and the relaxations,
  fused where XLA can), with ``unstable_rows`` False (every neuron) and True (unstable pairs);
* ``gradient (whole)``: the mean certified cross-entropy of the bound and its gradient in the weights
  (a training step's work), both ways.

``--run DIR`` profiles a trained run's weights on its first test images at its ε instead of a random
initialisation on uniform noise (where nearly every neuron is unstable).

Each stage is compiled on its own with the concrete inputs of the earlier stages; XLA's
``compiled.cost_analysis()`` gives its FLOPs and bytes accessed, and its time is the fastest of
``--repeats`` calls. The machine's peaks are measured here: a large float32 matmul (FLOP/s) and a large
elementwise update (bytes/s). Per stage: FLOPs, bytes, arithmetic intensity (FLOP/byte), time,
achieved GFLOP/s and GB/s, and their shares of the peaks. Markdown table + JSON (``--out``).

    python experiments/profile_crown.py                    # CNN3 batch 128, CNN7 batch 32
    python experiments/profile_crown.py --archs cnn3 --batch 32
    python experiments/profile_crown.py --quick            # seconds: tiny net
    python experiments/profile_crown.py --archs cnn3 --run runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bounds import trained_case

from jaxcert.bounds import certified_cross_entropy, margin_lower_bounds
from jaxcert.bounds.backsub import backsubstitute
from jaxcert.bounds.box import input_box
from jaxcert.bounds.crown import (
    affine_interval,
    crown_intermediate,
    make_line_fn,
    neuron_bounds,
    output_rows,
    use_windows,
)
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.pair_rows import CHUNKS_PER_LAYER, unstable_pair_bounds
from jaxcert.bounds.relu_slopes import crossing_mask
from jaxcert.bounds.row_chunks import MAX_ROWS_BYTES
from jaxcert.bounds.spec import batch_margin_spec, fold_spec
from jaxcert.nets import Conv, Dense, Flatten, Normalize, ReLU, get_architecture, init_params
from jaxcert.provenance import provenance
from jaxcert.runs import run_config

#: name -> (architecture, input shape, ε, default batch); as experiments/bench_bounds.py
ARCHS: dict[str, tuple[Callable[[], Any], tuple[int, ...], float, int]] = {
    "cnn3": (lambda: get_architecture("cnn3", dataset="fashion_mnist"), (28, 28, 1), 0.1, 128),
    "cnn7": (lambda: get_architecture("cnn7", dataset="cifar10"), (32, 32, 3), 2 / 255, 32),
    "mlp_14x14": (lambda: get_architecture("mlp_14x14", dataset="fashion_mnist"), (28, 28, 1), 0.1, 128),
    "tiny": (
        lambda: (Normalize((0.5,), (0.25,)), Conv(4, 3, 2, 1), ReLU(), Flatten(), Dense(8), ReLU(), Dense(10)),
        (8, 8, 1),
        0.1,
        4,
    ),
}


def cost(compiled: Any) -> tuple[float, float]:
    """``(flops, bytes accessed)`` of a compiled program by XLA's cost analysis (0 where not reported)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def fastest(call: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls after one warm-up call."""
    jax.block_until_ready(call())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        best = min(best, time.perf_counter() - start)
    return best


def measure(name: str, fn: Callable[..., Any], args: tuple[Any, ...], repeats: int) -> dict[str, Any]:
    """Compile ``fn`` for ``args``, read its cost, time it."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    flops, nbytes = cost(compiled)
    seconds = fastest(lambda: compiled(*args), repeats)
    return {"stage": name, "flops": flops, "bytes": nbytes, "seconds": seconds, "compile_s": compile_s}


def machine_peaks(repeats: int, size: int = 2048) -> dict[str, float]:
    """Measured peaks: float32 matmul FLOP/s (``size``³ · 2 per call) and bytes/s of ``a + 1`` on 256 MiB."""
    a = jax.random.normal(jax.random.key(0), (size, size))
    matmul = jax.jit(lambda a: a @ a)
    flops = 2 * size**3 / fastest(lambda: matmul(a), repeats)
    big = jnp.zeros(64 * 2**20, jnp.float32)  # 256 MiB
    update = jax.jit(lambda v: v + 1.0)
    bandwidth = 2 * big.nbytes / fastest(lambda: update(big), repeats)  # read + write
    return {"flops_per_s": flops, "bytes_per_s": bandwidth}


def stages(arch_name: str, batch: int, repeats: int, run_dir: str | None = None) -> list[dict[str, Any]]:
    """Every stage of the CROWN pass on ``arch_name`` at ``batch``, measured (``run_dir``: trained weights)."""
    build, in_shape, eps, _ = ARCHS[arch_name]
    arch = build()
    params = init_params(arch, in_shape, seed=0)
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(kx, (batch, *in_shape))
    y = jax.random.randint(ky, (batch,), 0, 10)
    if run_dir is not None:
        arch, params, x, y = trained_case(run_dir, arch, batch)
        eps = run_config(run_dir).eps
    lower, upper = input_box(x, eps)
    C = batch_margin_spec(arch, params, x, y)
    body, body_params, W, b = fold_spec(arch, params, C, batch)
    line_fn = make_line_fn(body, "adaptive", None, 0.1, 1.0)
    bounds, lines, out = jax.jit(lambda p, lo, hi: crown_intermediate(body, p, lo, hi, line_fn))(
        body_params, lower, upper
    )
    rows: list[dict[str, Any]] = []
    for i in sorted(bounds):
        earlier = {j: lines[j] for j in lines if j < i}
        if not earlier and i == min(bounds):  # the first ReLU's input bounds are the exact interval ones
            continue
        kind = type(body[i - 1]).__name__
        stage = lambda p, ls, lo, hi, i=i: neuron_bounds(body, p, i, None, ls, lo, hi)
        rows.append(measure(f"intermediate {i} ({kind}), whole layer", stage, (body_params, earlier, lower, upper),
                            repeats))  # fmt: skip
        interval = forward_interval(body, body_params, bounds, lines, i, lower, upper)
        windows = use_windows(body[:i], in_shape, "auto")
        pairs = lambda p, ls, lo, hi, iv, i=i, w=windows: unstable_pair_bounds(
            body, p, i, ls, lo, hi, iv, windows=w, unstable_chunk=None, max_rows_bytes=MAX_ROWS_BYTES
        )
        unstable = int(jnp.sum(crossing_mask(*interval)))
        total = interval[0].size
        chunk = -(-total // CHUNKS_PER_LAYER)
        name = f"intermediate {i} ({kind}), unstable pairs ({unstable} of {total}; {-(-unstable // chunk)} chunks)"
        rows.append(measure(name, pairs, (body_params, earlier, lower, upper, interval), repeats))
    A, a, _ = output_rows(W, b, False, out)
    final = lambda p, A, a, ls, lo, hi: backsubstitute(body, p, A, a, ls, lo, hi)
    rows.append(measure("final (margin rows)", final, (body_params, A, a, lines, lower, upper), repeats))
    for unstable_rows in (False, True):
        whole = lambda p, x, y, u=unstable_rows: margin_lower_bounds(
            arch, p, x, y, eps, relaxation="crown", unstable_rows=u
        )
        loss = lambda p, x, y, whole=whole: jnp.mean(certified_cross_entropy(whole(p, x, y)))
        rows.append(measure(f"bounds (whole), unstable_rows={unstable_rows}", whole, (params, x, y), repeats))
        rows.append(
            measure(
                f"gradient (whole), unstable_rows={unstable_rows}", jax.value_and_grad(loss), (params, x, y), repeats
            )
        )
    for row in rows:
        row.update(arch=arch_name, batch=batch)
    return rows


def forward_interval(
    body: Any, params: Any, bounds: dict[int, Any], lines: dict[int, Any], i: int, lower: jax.Array, upper: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The forward interval of ReLU input ``i`` that chooses its unstable pairs: interval arithmetic from the
    previous ReLU's refined bounds (the input box if none), as :func:`crown_intermediate` computes it."""
    earlier = [j for j in bounds if j < i]
    start, interval = (0, (lower, upper)) if not earlier else (max(earlier), bounds[max(earlier)])
    for j in range(start, i):
        spec = body[j]
        interval = affine_interval(spec, params[j], *interval) if spec.is_affine else (
            rule_for(spec, "interval", "profile_crown")(*interval))  # fmt: skip
    return interval


def with_rates(row: dict[str, Any], peaks: dict[str, float]) -> dict[str, Any]:
    """``row`` with intensity, achieved GFLOP/s and GB/s, shares of the peaks and examples/s."""
    t = row["seconds"]
    return {
        **row,
        "intensity": row["flops"] / row["bytes"] if row["bytes"] else None,
        "gflops": row["flops"] / t / 1e9,
        "gbytes_per_s": row["bytes"] / t / 1e9,
        "flops_share": row["flops"] / t / peaks["flops_per_s"],
        "bytes_share": row["bytes"] / t / peaks["bytes_per_s"],
        "examples_per_s": row["batch"] / t,
    }


def markdown(result: dict[str, Any]) -> str:
    p = result["peaks"]
    lines = [
        f"Measured peaks: {p['flops_per_s'] / 1e9:.1f} GFLOP/s (float32 matmul), {p['bytes_per_s'] / 1e9:.1f} GB/s "
        f"(elementwise); backend {result['backend']}, load average {result['load_before']:.2f} before, "
        f"{result['load_after']:.2f} after.",
        "",
        "| arch (batch) | stage | GFLOP | GB accessed | FLOP/byte | ms | GFLOP/s | % peak FLOP/s | GB/s | % peak GB/s "
        "| ex/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        intensity = "–" if r["intensity"] is None else f"{r['intensity']:.1f}"
        lines.append(
            f"| {r['arch']} ({r['batch']}) | {r['stage']} | {r['flops'] / 1e9:.2f} | {r['bytes'] / 1e9:.2f} | "
            f"{intensity} | {1e3 * r['seconds']:.1f} | {r['gflops']:.1f} | {100 * r['flops_share']:.1f} | "
            f"{r['gbytes_per_s']:.1f} | {100 * r['bytes_share']:.1f} | {r['examples_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="cnn3,cnn7", help=f"comma-separated, from {sorted(ARCHS)}")
    parser.add_argument("--batch", type=int, help="examples per call (default: 128 for CNN3, 32 for CNN7)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per stage (the fastest counts)")
    parser.add_argument("--quick", action="store_true", help="tiny net, for the tests")
    parser.add_argument("--run", help="a training run's folder: its weights, test images and ε (see the doc)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "profile_crown.json")
    args = parser.parse_args(argv)
    names = ["tiny"] if args.quick else args.archs.split(",")
    unknown = [n for n in names if n not in ARCHS]
    if unknown:
        parser.error(f"unknown architectures {unknown}; known: {sorted(ARCHS)}")
    if (args.batch is not None and args.batch < 1) or args.repeats < 1:
        parser.error("--batch and --repeats must be >= 1")
    load_before = os.getloadavg()[0]
    peaks = machine_peaks(args.repeats, 256 if args.quick else 2048)
    rows = [with_rates(r, peaks) for n in names for r in stages(n, args.batch or ARCHS[n][3], args.repeats, args.run)]
    result = {"backend": jax.default_backend(), "peaks": peaks, "rows": rows, "load_before": load_before,
              "load_after": os.getloadavg()[0], "provenance": provenance()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
