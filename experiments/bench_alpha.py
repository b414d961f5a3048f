"""alpha-crown-full with per-start-node slopes vs shared slopes: tightness, time and memory on CNN3 and CNN5.

For each case (CNN3: the trained run ``--run``, loaded read-only with :func:`jaxcert.runs.load_run`;
"cnn3-init" and CNN5: a random Shi et al. IBP initialisation) and each variant of ``alpha-crown-full``,

    shared      start_nodes=False, keep_best="example"   (the scheme before: one slope per example and
                                                          neuron in every intermediate pass)
    shared-row  start_nodes=False, keep_best="row"       (best-per-row keeping alone)
    auto        the defaults: per-start-node slopes where they fit ``max_slope_bytes``, best per row,
                the learning rate decayed by ``--lr-decay`` per step
    auto-const  the defaults with a constant learning rate (lr_decay=1: the default before)
    rows        start_nodes=True  (per start node in every pass)

it bounds the margins of the first ``--examples`` Fashion-MNIST test images at ``--eps`` (``--steps`` Adam
steps at ``--lr``, decayed by ``--lr-decay`` per step unless the variant says otherwise), in slices of
``--slice`` examples (one compiled program per variant), and reports the mean margin lower bound, its gain
over CROWN, the fraction of rows tighter / looser than "shared" (by more than 1e-4, relative to ``|bound|``
where that exceeds 1), the time of the timed call (compilation excluded, reported apart), examples/s, and
XLA's memory estimate of one slice (arguments + outputs + temporaries: the peak of the program). Prints a
markdown table and writes JSON (``--out``).

``--reference VENV`` also runs auto_LiRPA's CROWN-Optimized on the same weights, steps, lr and lr decay in
a subprocess with that virtual environment's Python (see /work/shared/reference/README.md), if its
``bin/python`` imports ``torch`` and ``auto_LiRPA``; otherwise the reference column says why it is
missing. A second table then compares every variant with the reference row by row (mean − reference,
rows tighter / looser, the worst row); the reference's memory is its process's peak RSS.

    python experiments/bench_alpha.py                         # CNN3 + CNN5, 32 examples, ε = 0.1, 20 steps
    python experiments/bench_alpha.py --quick                 # seconds: 2 examples, 2 steps, CNN3 only
    python experiments/bench_alpha.py --cases cnn3-init --variants shared,auto --reference /work/refvenv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bounds import estimated_bytes

from jaxcert.bounds import margin_lower_bounds
from jaxcert.data import load_dataset
from jaxcert.nets import forward, get_architecture, init_params
from jaxcert.provenance import provenance
from jaxcert.train.init import ibp_init

GiB = 2**30
CASES = ("cnn3", "cnn3-init", "cnn5")
RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "reference_alpha.py"

#: variant -> options of alpha-crown-full
VARIANTS: dict[str, dict[str, Any]] = {
    "shared": {"start_nodes": False, "keep_best": "example"},
    "shared-row": {"start_nodes": False, "keep_best": "row"},
    "auto": {},
    "auto-const": {"lr_decay": 1.0},
    "rows": {"start_nodes": True},
}
#: rows differ when they differ by more than this, relative to |bound| where that exceeds 1
TOLERANCE = 1e-4


def load_case(name: str, run: Path) -> tuple[Any, Any]:
    """``(arch, params)``: CNN3 from the trained run, "cnn3-init" and CNN5 from a random IBP initialisation."""
    if name == "cnn3":
        from jaxcert.runs import load_run

        arch, params, _ = load_run(run)
        return arch, params
    if name in ("cnn3-init", "cnn5"):
        arch = get_architecture(name.removesuffix("-init"), dataset="fashion_mnist")
        return arch, ibp_init(arch, init_params(arch, (28, 28, 1), seed=0), seed=0)
    raise ValueError(f"unknown case {name!r}; known: {', '.join(CASES)}")


def run_variant(
    arch: Any, params: Any, x: jax.Array, y: jax.Array, options: dict[str, Any], args: Any, relaxation: str = ""
) -> dict:
    """Margin lower bounds (N, K-1) of one variant of alpha-crown-full (or of ``relaxation``), in slices;
    times and memory."""
    if relaxation:
        kwargs = options
    else:
        relaxation, kwargs = "alpha-crown-full", {"steps": args.steps, "lr": args.lr, "lr_decay": args.lr_decay}
        kwargs.update(options)

    def bound(p: Any, xs: jax.Array, ys: jax.Array) -> jax.Array:
        return margin_lower_bounds(arch, p, xs, ys, args.eps, relaxation=relaxation, **kwargs)

    start = time.perf_counter()
    compiled = jax.jit(bound).lower(params, x[: args.slice], y[: args.slice]).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    lbs = [
        jax.block_until_ready(compiled(params, x[i : i + args.slice], y[i : i + args.slice]))
        for i in range(0, len(x), args.slice)
    ]
    seconds = time.perf_counter() - start
    memory = estimated_bytes(compiled)
    return {
        "lb": np.concatenate([np.asarray(b) for b in lbs]),
        "compile_s": compile_s,
        "seconds": seconds,
        "throughput": len(x) / seconds,
        "memory_gib": None if memory is None else memory / GiB,
    }


def reference_bounds(venv: Path, arch: Any, params: Any, x: np.ndarray, y: np.ndarray, args: Any) -> dict:
    """auto_LiRPA CROWN-Optimized margin lower bounds in a subprocess of ``venv``'s Python, or why not."""
    python = venv / "bin" / "python"
    check = subprocess.run([str(python), "-c", "import torch, auto_LiRPA"], capture_output=True, text=True)
    if check.returncode != 0:
        return {"error": f"{python} cannot import torch and auto_LiRPA"}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "case.npz"
        flat = {f"p{i}_{k}": np.asarray(v) for i, p in enumerate(params) for k, v in p.items()}
        layers = json.dumps([{"kind": type(s).__name__, **dataclasses.asdict(s)} for s in arch])
        logits = np.asarray(forward(arch, params, jnp.asarray(x)))
        np.savez(weights, x=x, y=y, logits=logits, layers=layers, **flat)
        out = Path(tmp) / "out.npz"
        command = [
            str(python), str(REFERENCE_SCRIPT), str(weights), str(out), "--eps", str(args.eps),
            "--steps", str(args.steps), "--lr", str(args.lr), "--lr-decay", str(args.lr_decay),
            "--slice", str(args.slice),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
        result = np.load(out)
        seconds = float(result["seconds"])
        return {
            "lb": result["lb"], "seconds": seconds, "throughput": len(x) / seconds,
            "peak_rss_gib": float(result["peak_rss_gib"]),
        }  # fmt: skip


def save_reference(path: Path, result: dict) -> None:
    """The reference's bounds, seconds and peak memory, to compare again later (``--reference-saved``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, lb=result["lb"], seconds=result["seconds"], peak_rss_gib=result.get("peak_rss_gib", np.nan))


def saved_reference(path: Path, shape: tuple[int, ...]) -> dict:
    """A reference result saved by :func:`save_reference` (or ``reference_alpha.py``), for bounds of ``shape``."""
    saved = np.load(path)
    if saved["lb"].shape != shape:
        raise SystemExit(f"--reference-saved {path}: bounds of shape {saved['lb'].shape}, this run has {shape}")
    seconds = float(saved["seconds"])
    peak = float(saved["peak_rss_gib"]) if "peak_rss_gib" in saved.files else float("nan")
    return {"lb": saved["lb"], "seconds": seconds, "throughput": shape[0] / seconds, "peak_rss_gib": peak}


def compare(lb: np.ndarray, base: np.ndarray) -> dict[str, float]:
    """Mean bound, mean and worst difference, and the fraction of rows tighter / looser than ``base`` by more
    than ``TOLERANCE · max(1, |base|)`` (absolute for small bounds, relative for large ones)."""
    diff = lb - base
    tol = TOLERANCE * np.maximum(1.0, np.abs(base))
    return {
        "mean_lb": float(lb.mean()),
        "mean_gain": float(diff.mean()),
        "worst_gain": float(diff.min()),
        "frac_tighter": float((diff > tol).mean()),
        "frac_looser": float((diff < -tol).mean()),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | variant | mean margin lb | gain vs shared | rows tighter | rows looser | time (s) | ex/s "
        "| compile (s) | XLA peak (GiB) |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['variant']} | {r['error']} | | | | | | | |")
            continue
        mem = "—" if r.get("memory_gib") is None else f"{r['memory_gib']:.2f}"
        compile_s = "—" if r.get("compile_s") is None else f"{r['compile_s']:.1f}"
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['mean_lb']:.3f} | {r['mean_gain']:+.3f} | {r['frac_tighter']:.1%} "
            f"| {r['frac_looser']:.1%} | {r['seconds']:.1f} | {r['throughput']:.2f} | {compile_s} | {mem} |"
        )
    return "\n".join(lines)


def reference_table(rows: list[dict[str, Any]]) -> str:
    """Every variant against the reference, row by row (rows without a reference comparison are skipped)."""
    lines = [
        "| case | variant | mean margin lb | gain over CROWN | mean − reference | rows tighter | rows looser "
        "| worst row − reference | time (s) | peak memory (GiB) |\n|---|---|---|---|---|---|---|---|---|---|"
    ]
    for r in rows:
        ref = r.get("vs_reference")
        if ref is None or "error" in r:
            continue
        if r["variant"] == "reference":
            peak = r.get("peak_rss_gib", float("nan"))
            memory = "—" if np.isnan(peak) else f"{peak:.2f} (process RSS)"
        else:
            memory = "—" if r.get("memory_gib") is None else f"{r['memory_gib']:.2f} (XLA)"
        gain = "—" if r.get("gain_over_crown") is None else f"{r['gain_over_crown']:+.4f}"
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['mean_lb']:.5f} | {gain} | {ref['mean_gain']:+.1e} "
            f"| {ref['frac_tighter']:.1%} | {ref['frac_looser']:.1%} | {ref['worst_gain']:+.1e} | {r['seconds']:.1f} "
            f"| {memory} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cases", default="cnn3,cnn5", help="comma-separated: cnn3 (trained run), cnn3-init, cnn5 (IBP init)"
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--run", type=Path, default=Path("/work/main/runs/quickstart"), help="the trained CNN3 run")
    p.add_argument("--examples", type=int, default=32)
    p.add_argument("--slice", type=int, default=8, help="examples per call (one compiled program per variant)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-decay", type=float, default=0.98, help="learning rate × this per step (both sides)")
    p.add_argument("--reference", type=Path, default=None, help="virtual environment with auto_LiRPA (optional)")
    p.add_argument(
        "--reference-saved", type=Path, default=None,
        help="a reference result saved by an earlier run (OUT.CASE.reference.npz) instead of running it (one case)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="2 examples, 2 steps, CNN3 only (seconds)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_alpha.json")
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.examples, args.slice, args.steps = "cnn3", 2, 2, 2
    for name in ("examples", "slice"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.examples % args.slice:
        p.error(f"--examples ({args.examples}) must be a multiple of --slice ({args.slice})")
    if not 0 < args.lr_decay <= 1:
        p.error(f"--lr-decay must be in (0, 1], got {args.lr_decay}")
    unknown_cases = [c for c in args.cases.split(",") if c not in CASES]
    if unknown_cases:
        p.error(f"unknown case(s) {', '.join(unknown_cases)}; known: {', '.join(CASES)}")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.reference_saved is not None and not args.reference_saved.is_file():
        p.error(f"--reference-saved {args.reference_saved}: no such file")
    if args.reference_saved is not None and "," in args.cases:
        p.error("--reference-saved takes one case")
    if args.reference is not None and not args.reference.is_dir():
        p.error(f"--reference {args.reference}: no such virtual environment")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    data = load_dataset("fashion_mnist", "test", limit=args.examples)
    x, y = jnp.asarray(data.x), jnp.asarray(data.y)
    rows: list[dict[str, Any]] = []
    for case in args.cases.split(","):
        arch, params = load_case(case, args.run)
        crown = run_variant(arch, params, x, y, {}, args, relaxation="crown")["lb"]
        results = {v: run_variant(arch, params, x, y, dict(VARIANTS[v]), args) for v in args.variants.split(",")}
        base = results.get("shared", next(iter(results.values())))["lb"]
        if args.reference_saved is not None:
            results["reference"] = saved_reference(args.reference_saved, crown.shape)
        elif args.reference is not None:
            results["reference"] = reference_bounds(args.reference, arch, params, np.asarray(x), np.asarray(y), args)
            if "lb" in results["reference"]:
                save_reference(args.out.with_suffix(f".{case}.reference.npz"), results["reference"])
        for variant, r in results.items():
            row = {"case": case, "variant": variant}
            if "error" in r:
                rows.append({**row, "error": r["error"]})
                continue
            rows.append({**row, **compare(r["lb"], base), **{k: v for k, v in r.items() if k != "lb"}})
            rows[-1]["gain_over_crown"] = float((r["lb"] - crown).mean())
            if "reference" in results and "lb" in results["reference"]:
                rows[-1]["vs_reference"] = compare(r["lb"], results["reference"]["lb"])
    table = markdown_table(rows)
    if any("vs_reference" in r for r in rows):
        table += "\n\nAgainst the reference:\n\n" + reference_table(rows)
    print(table)
    out = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        "table": table,
        "load_average": os.getloadavg(),
        "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
        "machine": platform.platform(),
        "provenance": provenance(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
