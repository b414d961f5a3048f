"""Branch and bound after the cascade on a saved run: what it settles, domains per second, peak memory.

Two measurements on the run (read only: nothing is written into it):

1. ``certify`` — the default cascade of :func:`jaxcert.certify.certify_dataset` (no branch and bound) on
   the first ``--limit`` test examples, once; then branch and bound (:func:`jaxcert.bab.stage.run_bab`,
   ``BabOptions(timeout=t, batch=--batch)``) on the examples it leaves open, at each timeout ``t`` of
   ``--timeouts`` in turn. The search is deterministic apart from when it stops, so an example settled
   within ``t`` seconds is settled the same way at any longer timeout: each later timeout runs only on
   the examples the previous one left at "timeout" (at most ``--max-rerun`` of them, the first ones),
   and its counts include those settled before. Per timeout: verified / falsified (confirmed by
   :func:`jaxcert.certify.is_counterexample`) / timeout / unknown, domains, domains per second (search
   time, compilation excluded), compile seconds, the process's peak RSS so far; per example: state,
   domains, seconds, lower bound. ``--scratch`` adds the first timeout again with children re-bounded
   from scratch (``BabOptions(inherit=False)``: no parent bounds), on the same open examples.
2. ``throughput`` — the batch program alone (:class:`jaxcert.bab.search.Bounder`) on the box of the first
   test example, ``--steps`` calls of ``--batch`` domains with random splits of up to 8 neurons: domains
   per second at each ``--alpha-steps`` setting (0: CROWN; k: k alpha-CROWN steps on the final slopes).

Peak memory: the process's peak resident set (``ru_maxrss``) and, on an accelerator, the device's
``peak_bytes_in_use``. Prints markdown tables and writes JSON (``--out``).

    python experiments/bench_bab.py runs/quickstart --limit 200 --timeouts 10,60 --max-rerun 8
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
from jaxcert.bab import BabOptions, check_bab_options
from jaxcert.bab.search import Bounder
from jaxcert.bab.stage import margin_rows, run_bab
from jaxcert.certify import certify_dataset, is_counterexample
from jaxcert.nets import forward
from jaxcert.provenance import provenance
from jaxcert.runs import load_test_split

MiB = 2**20
STATES = ("verified", "falsified", "timeout", "unknown")


def peak_memory() -> dict[str, float | None]:
    """Peak host RSS (MiB) and, where the backend reports it, the device's peak bytes in use (MiB)."""
    stats = jax.devices()[0].memory_stats() or {}
    device = stats.get("peak_bytes_in_use")
    return {"host_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device_peak_mib": None if device is None else device / MiB}  # fmt: skip


def cascade_open(arch: Any, params: Any, ds: Any, eps: float) -> dict[str, Any]:
    """The default cascade (no branch and bound) on ``ds``: the examples it leaves open and its timings."""
    began = time.time()
    report = certify_dataset(arch, params, ds, eps, progress=False)
    return {"examples": report.n, "open": np.flatnonzero(report.states == "unknown").tolist(),
            "cert_acc": report.accuracies()["cert_acc"], "pgd_acc": report.accuracies()["pgd_acc"],
            "seconds": round(time.time() - began, 1), **peak_memory()}  # fmt: skip


def bab_examples(arch: Any, params: Any, ds: Any, eps: float, rows: list[int], options: BabOptions) -> dict[str, Any]:
    """Branch and bound on the examples ``rows`` of ``ds``: per example state, domains, seconds, bound."""
    x, y = np.asarray(ds.x, np.float32), np.asarray(ds.y)
    lo, hi = (float(v) for v in ds.input_range)
    classes = int(np.asarray(forward(arch, params, x[:1])).shape[-1])
    began = time.time()
    results, compile_seconds = run_bab(arch, params, x, y, eps, lo, hi, np.asarray(rows, np.int64), options, classes)
    examples = {}
    for r, result in results.items():
        state = result.state
        if state == "falsified":  # as certify: a counterexample counts only once confirmed
            found = is_counterexample(arch, params, x[r : r + 1], np.asarray(result.x, np.float32)[None],
                                      y[r : r + 1], eps, lo, hi)[0]  # fmt: skip
            state = "falsified" if found else "unknown"
        examples[r] = {"state": state, "domains": result.domains, "seconds": round(result.seconds, 2),
                       "lower": None if np.isnan(result.lower) else round(result.lower, 5)}  # fmt: skip
    return {"examples": examples, "compile_seconds": round(compile_seconds, 1),
            "wall_seconds": round(time.time() - began, 1)}  # fmt: skip


def summary(timeout: float, inherit: bool, examples: dict[int, dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """One table row: the states of ``examples`` (every open example carried so far) and the throughput of
    the searches run at this setting (``run``)."""
    ran = run["examples"]
    domains, seconds = sum(e["domains"] for e in ran.values()), sum(e["seconds"] for e in ran.values())
    return {
        "timeout_s": timeout, "inherit": inherit, "open": len(examples), "searched": len(ran),
        **{state: sum(e["state"] == state for e in examples.values()) for state in STATES},
        "domains": domains, "search_seconds": round(seconds, 1),
        "domains_per_second": round(domains / max(seconds, 1e-9), 1), "compile_seconds": run["compile_seconds"],
        "wall_seconds": run["wall_seconds"], **peak_memory(),
    }  # fmt: skip


def certify_rows(arch: Any, params: Any, ds: Any, eps: float, args: argparse.Namespace) -> dict[str, Any]:
    """Measurement 1 (see the module doc)."""
    cascade = cascade_open(arch, params, ds, eps)
    print(json.dumps(cascade), flush=True)
    rows, carried, per_timeout = [], {}, {}
    todo = cascade["open"]
    for t in args.timeouts:
        options = BabOptions(timeout=t, batch=args.batch)
        run = bab_examples(arch, params, ds, eps, todo, options)
        carried.update(run["examples"])
        per_timeout[str(t)] = run["examples"]
        rows.append(summary(t, True, dict(carried), run))
        print(json.dumps(rows[-1]), flush=True)
        todo = [r for r in todo if carried[r]["state"] == "timeout"][: args.max_rerun]
        carried = {r: e for r, e in carried.items() if e["state"] != "timeout" or r in todo}
    if args.scratch:
        t = args.timeouts[0]
        scratch = BabOptions(timeout=t, batch=args.batch, inherit=False)
        run = bab_examples(arch, params, ds, eps, cascade["open"], scratch)
        per_timeout[f"{t} scratch"] = run["examples"]
        rows.append(summary(t, False, run["examples"], run))
        print(json.dumps(rows[-1]), flush=True)
    return {"cascade": cascade, "rows": rows, "per_example": per_timeout}


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
        c = certify["cascade"]
        lines += [
            f"Cascade: {c['examples']} examples, {len(c['open'])} open (certified {c['cert_acc']:.3f}, PGD "
            f"{c['pgd_acc']:.3f}), {c['seconds']} s.",
            "",
            "| timeout s | children | open | searched | verified | falsified | timeout | unknown | domains "
            "| domains/s | compile s | wall s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['timeout_s']:g} | {'inherit' if r['inherit'] else 'scratch'} | {r['open']} | {r['searched']} | "
            f"{r['verified']} | {r['falsified']} | {r['timeout']} | {r['unknown']} | {r['domains']} | "
            f"{r['domains_per_second']} | {r['compile_seconds']} | {r['wall_seconds']} | {r['host_peak_mib']:.0f} |"
            for r in certify["rows"]
        ]
        lines.append("")
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


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a training run folder (read only)")
    p.add_argument("--limit", type=int, default=200, help="test examples certified (measurement 1; 0: skip it)")
    p.add_argument("--eps", type=float, help="radius (default: the run's evaluation eps)")
    p.add_argument(
        "--timeouts",
        type=_floats,
        default=[10.0],
        help="comma list of branch-and-bound seconds per "
        "example, increasing; each after the first reruns the examples the previous left at timeout",
    )
    p.add_argument("--max-rerun", type=int, default=1_000_000, help="examples rerun at each later timeout at most")
    p.add_argument(
        "--scratch",
        action="store_true",
        help="the first timeout again with children re-bounded from scratch (no parent bounds)",
    )
    p.add_argument("--batch", type=int, default=64, help="domains per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps of the throughput measurement")
    p.add_argument("--alpha-steps", default="0", help="comma list of alpha steps for the throughput rows")
    p.add_argument("--out", type=Path, default=Path("experiments/results/bench_bab.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not (args.run_dir / "config.json").is_file():
        raise SystemExit(f"error: {args.run_dir} is not a training run folder (no config.json)")
    if not args.timeouts or any(b <= a for a, b in zip(args.timeouts, args.timeouts[1:], strict=False)):
        raise SystemExit(f"error: --timeouts must be increasing, got {args.timeouts}")
    for t in args.timeouts:
        try:
            check_bab_options(BabOptions(timeout=t, batch=args.batch))
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    if args.max_rerun < 0:
        raise SystemExit(f"error: --max-rerun must be >= 0, got {args.max_rerun}")
    arch, params, config = jaxcert.load_run(args.run_dir)
    eps = config.test_eps if args.eps is None else args.eps
    certify = None
    if args.limit:
        certify = certify_rows(arch, params, load_test_split(config, limit=args.limit), eps, args)
    ds = load_test_split(config, limit=1)
    rows = []
    for k in (int(v) for v in args.alpha_steps.split(",") if v):
        rows.append(throughput_row(arch, params, ds, eps, BabOptions(batch=args.batch, alpha_steps=k), args.steps))
        print(json.dumps(rows[-1]), flush=True)
    memory = peak_memory()
    table = markdown(certify, rows, memory)
    print(table)
    out = {"run_dir": str(args.run_dir), "eps": eps, "limit": args.limit, "timeouts": args.timeouts,
           "max_rerun": args.max_rerun, "batch": args.batch,
           "certify": certify, "throughput": rows, "memory": memory, "table": table,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg(),
                       "device": str(jax.devices()[0])}, "provenance": provenance()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
