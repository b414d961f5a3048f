"""CNN3's CROWN-IBP margin bound and its training step, stage by stage and XLA operation by operation.

Two views of the work ``bench_reference.py``'s ``cnn3-crown-ibp-*`` rows time (random-init CNN3, uniform
inputs, batch 128, ε = 0.1, lower margins only):

* **stages**, each compiled on its own with the concrete inputs of the earlier ones: the IBP pass, the
  ReLU relaxations, the margin rows ``C W`` back through every layer of the body (one stage per layer),
  the concretisation at the input box, the whole bound and the whole value-and-gradient of the mean
  certified cross-entropy. XLA's cost analysis gives FLOPs and bytes; the time is the fastest of
  ``--repeats`` calls (wall) with its process CPU time (less sensitive to other jobs on the machine);
* **operations** (``--ops``): the whole bound or training step run under ``jax.profiler`` and the
  duration of each XLA operation (fusion, convolution, dot) summed over ``--repeats`` calls, with its
  share of all operations' time and the HLO shape and JAX source op it comes from. Shares, not the
  absolute times, are what a loaded machine leaves comparable.

    python experiments/profile_crown_ibp.py                       # stages
    python experiments/profile_crown_ibp.py --ops grad --top 25   # where the training step's time goes
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_crown import cost

from jaxcert.bounds import certified_cross_entropy, margin_lower_bounds
from jaxcert.bounds.backsub import backward_affine, box_image, concretize
from jaxcert.bounds.box import input_box
from jaxcert.bounds.crown import make_line_fn, output_rows, relu_indices
from jaxcert.bounds.ibp import interval_layers
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.spec import batch_margin_spec, fold_spec
from jaxcert.nets import get_architecture, init_params
from jaxcert.nets.graph import plan_for


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """``(fastest wall seconds, fastest process CPU seconds)`` of ``repeats`` calls after a warm-up call."""
    jax.block_until_ready(call())
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(call())
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def case(batch: int) -> tuple[Any, Any, jax.Array, jax.Array, float]:
    arch = get_architecture("cnn3", dataset="fashion_mnist")
    params = init_params(arch, (28, 28, 1), seed=0)
    kx, ky = jax.random.split(jax.random.key(0))
    return arch, params, jax.random.uniform(kx, (batch, 28, 28, 1)), jax.random.randint(ky, (batch,), 0, 10), 0.1


def whole_programs(arch: Any, eps: float) -> dict[str, Callable[..., Any]]:
    bound = lambda p, x, y: margin_lower_bounds(arch, p, x, y, eps, relaxation="crown-ibp")
    loss = lambda p, x, y: jnp.mean(certified_cross_entropy(bound(p, x, y)))
    return {"bounds": bound, "grad": jax.value_and_grad(loss)}


def stages(batch: int, repeats: int) -> list[dict[str, Any]]:
    """Every stage of the bound (see the module doc), measured."""
    arch, params, x, y, eps = case(batch)
    rows: list[dict[str, Any]] = []

    def measure(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        compiled = jax.jit(fn).lower(*args).compile()
        flops, nbytes = cost(compiled)
        wall, cpu = timed(lambda: compiled(*args), repeats)
        rows.append({"stage": name, "flops": flops, "bytes": nbytes, "seconds": wall, "cpu_seconds": cpu})
        return compiled(*args)

    lower, upper = input_box(x, eps)
    body, body_params, W, b = fold_spec(arch, params, batch_margin_spec(arch, params, x, y), batch)
    line_fn = make_line_fn(body)
    layers = measure("IBP pass", lambda p, lo, hi: interval_layers(body, p, lo, hi), body_params, lower, upper)
    lines = measure("ReLU relaxations", lambda L: {i: line_fn(i, *L[i]) for i in relu_indices(body)}, layers)
    A, a, _ = output_rows(W, b, False, layers[-1])
    plan = plan_for(body, x.shape[1:])
    for i in reversed(range(plan.box_prefix, len(body))):
        spec, p = body[i], body_params[i]
        if spec.is_affine:
            step = lambda A, a, spec=spec, p=p, i=i: backward_affine(spec, p, A, a, plan.shapes[i])
        else:
            step = lambda A, a, i=i: rule_for(body[i], "backward", "profile")(A, a, lines[i])
        A, a = measure(f"rows back through {i} {type(spec).__name__} ({A.shape[1]} rows of {A.shape[2:]})", step, A, a)
    box = box_image(body[: plan.box_prefix], body_params[: plan.box_prefix], lower, upper)
    measure("concretisation at the input box", concretize, A, a, *box)
    for name, fn in whole_programs(arch, eps).items():
        measure(f"{name} (whole)", fn, params, x, y)
    for row in rows:
        row["examples_per_s"] = batch / row["seconds"]
    return rows


def operations(work: str, batch: int, repeats: int, top: int) -> list[dict[str, Any]]:
    """The ``top`` XLA operations of the whole ``work`` ("bounds" or "grad") by summed profiled duration."""
    arch, params, x, y, eps = case(batch)
    compiled = jax.jit(whole_programs(arch, eps)[work]).lower(params, x, y).compile()
    hlo = compiled.as_text()
    for _ in range(2):
        jax.block_until_ready(compiled(params, x, y))
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(repeats):
                jax.block_until_ready(compiled(params, x, y))
        (path,) = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(path))["traceEvents"]
    total: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e and re.search(rf"^\s+(ROOT )?%{re.escape(e['name'])} = ", hlo, re.M):
            total[e["name"]] += e["dur"] / 1e6 / repeats
    whole = sum(total.values())
    rows = []
    for name, seconds in total.most_common(top):
        line = re.search(rf"^\s+(?:ROOT )?%{re.escape(name)} = (\S+) (.*)$", hlo, re.M)
        source = re.search(r'op_name="([^"]*)"', line.group(2)) if line else None
        shape, source = (line.group(1) if line else ""), (source.group(1) if source else "")
        rows.append({"op": name, "seconds": seconds, "share": seconds / whole, "shape": shape, "source": source})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed (or profiled) calls; the fastest counts")
    parser.add_argument("--ops", choices=("bounds", "grad"), help="per-operation profile of this whole program")
    parser.add_argument("--top", type=int, default=25, help="operations listed with --ops")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "profile_crown_ibp.json")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.top < 1:
        parser.error("--batch, --repeats and --top must be >= 1")
    load = os.getloadavg()[0]
    if args.ops:
        rows = operations(args.ops, args.batch, args.repeats, args.top)
        lines = ["| operation | share | ms | shape | from |", "|---|---|---|---|---|"]
        lines += [f"| {r['op']} | {100 * r['share']:.1f} % | {1e3 * r['seconds']:.1f} | {r['shape']} | "
                  f"{r['source'][-70:]} |" for r in rows]  # fmt: skip
    else:
        rows = stages(args.batch, args.repeats)
        lines = [
            "| stage | GFLOP | GB | FLOP/byte | ms (wall) | ms (CPU) | GFLOP/s (CPU) | ex/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {r['stage']} | {r['flops'] / 1e9:.3f} | {r['bytes'] / 1e9:.3f} | "
                  f"{r['flops'] / max(r['bytes'], 1):.1f} | {1e3 * r['seconds']:.1f} | {1e3 * r['cpu_seconds']:.1f} | "
                  f"{r['flops'] / r['cpu_seconds'] / 1e9:.1f} | {r['examples_per_s']:.0f} |" for r in rows]  # fmt: skip
    table = "\n".join(lines) + f"\n\nload average {load:.2f} before, {os.getloadavg()[0]:.2f} after\n"
    result = {
        "rows": rows,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "args": vars(args) | {"out": str(args.out)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table)
    return result


if __name__ == "__main__":
    main()
