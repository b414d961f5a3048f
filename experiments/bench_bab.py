"""Branch and bound after the cascade on a saved run: what it settles, domains per second, peak memory.

Two measurements on the run (read only: nothing is written into it):

1. ``certify`` — :func:`jaxcert.certify.certify_dataset` on the first ``--limit`` test examples with the
   default cascade and ``bab=BabOptions(timeout=--timeout, batch=--batch)``: how many examples the cascade
   leaves open, and how branch and bound settles them (verified / falsified / unknown / timeout), its
   domains, domains per second (search time, compilation excluded) and compile seconds.
2. ``throughput`` — the batch program alone (:class:`jaxcert.bab.search.Bounder`) on the box of the first
   test example, ``--steps`` calls of ``--batch`` domains with random splits of up to 8 neurons: domains
   per second at each ``--alpha-steps`` setting (0: CROWN; k: k alpha-CROWN steps on the final slopes).

Peak memory: the process's peak resident set (``ru_maxrss``) and, on an accelerator, the device's
``peak_bytes_in_use``. Prints a markdown table and writes JSON (``--out``).

    python experiments/bench_bab.py runs/quickstart --limit 200 --timeout 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxcert
from jaxcert.bab import BabOptions
from jaxcert.bab.search import Bounder
from jaxcert.bab.stage import margin_rows
from jaxcert.certify import certify_dataset
from jaxcert.provenance import provenance
from jaxcert.runs import load_test_split

MiB = 2**20


def peak_memory() -> dict[str, float | None]:
    """Peak host RSS (MiB) and, where the backend reports it, the device's peak bytes in use (MiB)."""
    stats = jax.devices()[0].memory_stats() or {}
    device = stats.get("peak_bytes_in_use")
    return {"host_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device_peak_mib": None if device is None else device / MiB}  # fmt: skip


def certify_row(arch: Any, params: Any, ds: Any, eps: float, options: BabOptions) -> dict[str, Any]:
    """Measurement 1 (see the module doc)."""
    began = time.time()
    report = certify_dataset(arch, params, ds, eps, bab=options, progress=False)
    stage = next(s for s in report.stages if s["stage"] == "bab")
    by_bab = report.by == "bab"
    settled = {state: int(np.sum(by_bab & (report.states == state))) for state in ("verified", "falsified", "timeout")}
    return {
        "examples": report.n, "open_after_cascade": stage["examples"], **settled,
        "unknown": int(np.sum(report.states == "unknown")), "domains": stage["domains"],
        "domains_per_second": stage["domains_per_second"], "compile_seconds": stage["compile_seconds"],
        "bab_seconds": stage["seconds"], "total_seconds": round(time.time() - began, 1),
        "cert_acc": report.accuracies()["cert_acc"],
    }  # fmt: skip


def throughput_row(arch: Any, params: Any, ds: Any, eps: float, options: BabOptions, steps: int) -> dict[str, Any]:
    """Measurement 2 (see the module doc)."""
    lo, hi = (float(v) for v in ds.input_range)
    x, y = np.asarray(ds.x[0], np.float32), int(ds.y[0])
    lower, upper = np.clip(x - np.float32(eps), lo, hi), np.clip(x + np.float32(eps), lo, hi)
    bounder = Bounder(arch, params, x.shape, int(np.max(ds.y)) + 1, options)
    rng = np.random.default_rng(0)
    C = margin_rows(y, int(np.max(ds.y)) + 1)
    calls = []
    for _ in range(steps + 1):  # the first call is a warm-up (transfers, allocation)
        splits = np.zeros((options.batch, bounder.neurons), np.int8)
        for d in range(options.batch):
            chosen = rng.choice(bounder.neurons, size=rng.integers(0, 9), replace=False)
            splits[d, chosen] = rng.choice(np.array([-1, 1], np.int8), size=chosen.size)
        began = time.perf_counter()
        bounder.bound(lower, upper, C, y, splits)
        calls.append(time.perf_counter() - began)
    seconds = float(np.median(calls[1:]))
    return {"alpha_steps": options.alpha_steps, "batch": options.batch, "neurons": bounder.neurons,
            "compile_seconds": round(bounder.compile_seconds, 2), "seconds_per_step": round(seconds, 4),
            "domains_per_second": round(options.batch / seconds, 1)}  # fmt: skip


def markdown(certify: dict[str, Any] | None, rows: list[dict[str, Any]], memory: dict[str, Any]) -> str:
    lines = []
    if certify is not None:
        lines += [
            "| examples | open after cascade | bab verified | bab falsified | bab timeout | still unknown | domains "
            "| domains/s | compile s | bab s |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {certify['examples']} | {certify['open_after_cascade']} | {certify['verified']} | "
            f"{certify['falsified']} | {certify['timeout']} | {certify['unknown']} | {certify['domains']} | "
            f"{certify['domains_per_second']} | {certify['compile_seconds']} | {certify['bab_seconds']} |",
            "",
        ]
    lines += ["| alpha steps | batch | ReLU neurons | compile s | s / step | domains/s |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['alpha_steps']} | {r['batch']} | {r['neurons']} | {r['compile_seconds']} | {r['seconds_per_step']} "
        f"| {r['domains_per_second']} |"
        for r in rows
    ]
    device = memory["device_peak_mib"]
    peak = f"Peak host RSS {memory['host_peak_mib']:.0f} MiB" + ("" if device is None else f", device {device:.0f} MiB")
    lines += ["", f"{peak}; device: {jax.devices()[0]}."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a training run folder (read only)")
    p.add_argument("--limit", type=int, default=200, help="test examples certified (measurement 1; 0: skip it)")
    p.add_argument("--eps", type=float, help="radius (default: the run's evaluation eps)")
    p.add_argument("--timeout", type=float, default=10.0, help="branch-and-bound seconds per example")
    p.add_argument("--batch", type=int, default=64, help="domains per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps of the throughput measurement")
    p.add_argument("--alpha-steps", default="0", help="comma list of alpha steps for the throughput rows")
    p.add_argument("--out", type=Path, default=Path("experiments/results/bench_bab.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not (args.run_dir / "config.json").is_file():
        raise SystemExit(f"error: {args.run_dir} is not a training run folder (no config.json)")
    arch, params, config = jaxcert.load_run(args.run_dir)
    eps = config.test_eps if args.eps is None else args.eps
    certify = None
    if args.limit:
        ds = load_test_split(config, limit=args.limit)
        certify = certify_row(arch, params, ds, eps, BabOptions(timeout=args.timeout, batch=args.batch))
        print(json.dumps(certify), flush=True)
    ds = load_test_split(config, limit=1)
    rows = []
    for k in (int(v) for v in args.alpha_steps.split(",") if v):
        rows.append(throughput_row(arch, params, ds, eps, BabOptions(batch=args.batch, alpha_steps=k), args.steps))
        print(json.dumps(rows[-1]), flush=True)
    memory = peak_memory()
    table = markdown(certify, rows, memory)
    print(table)
    out = {"run_dir": str(args.run_dir), "eps": eps, "limit": args.limit, "timeout": args.timeout,
           "certify": certify, "throughput": rows, "memory": memory, "table": table,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg(),
                       "device": str(jax.devices()[0])}, "provenance": provenance()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
