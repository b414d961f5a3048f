"""Benchmark of multi-device and multi-process training: steps/s and peak memory per layout.

Each layout is ``P`` processes × ``D`` devices per process (on CPU, host devices from
``--xla_force_host_platform_device_count``; with ``P > 1`` the processes join one run through
``jax.distributed`` on localhost, with gloo collectives). Every layout runs the real training loop
(``jaxcert.train.loop.train``: per-process batch loading, the global mesh, checkpoints at the end) for
certified IBP training (batch split over all ``P·D`` devices) and RGS (the ``k`` samples split over them),
on a small network. Throughput

    steps/s = (steps − warm-up) / (t_last − t_warm-up)

from the loop's own per-step timestamps (``metrics.jsonl``, one record per step), so compilation and the
first steps are excluded; peak memory is each process's maximum resident set size (``ru_maxrss``), the
largest over the processes of a layout. Layouts run one after another (never two at once).

    python experiments/bench_distributed.py            # the measured table (CPU: a few minutes)
    python experiments/bench_distributed.py --quick    # seconds: smoke setting
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxcert.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "bench_distributed"

FULL = {
    "layouts": ((1, 1), (1, 2), (1, 4), (2, 1), (2, 2)),
    "methods": ("certified", "rgs"),
    "config": {"dataset": "fashion_mnist", "arch": "paradox_fc", "train_limit": 4096, "batch_size": 256,
               "samples": 4, "sigma": 0.01, "init": "ibp"},
    "steps": 40, "warmup": 5,
}  # fmt: skip
QUICK = {
    "layouts": ((1, 1), (2, 1)),
    "methods": ("certified", "rgs"),
    "config": {"dataset": "spheres", "arch": "mlp_small", "train_limit": 256, "batch_size": 32, "samples": 2},
    "steps": 6, "warmup": 2,
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny setting (seconds)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"directory for {NAME}.json and {NAME}.md")
    p.add_argument("--work", type=Path, default=Path("runs/bench_distributed"), help="run directories")
    p.add_argument("--timeout", type=float, default=300, help="seconds allowed per layout")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one process of one layout (JSON settings)
    return p.parse_args(argv)


def worker(settings: dict[str, Any]) -> None:
    """One process of a layout: train, then print steps/s (process 0) and this process's peak RSS."""
    from jaxcert.train.configs import get_config, override
    from jaxcert.train.distributed import is_main_process
    from jaxcert.workflow import train

    config = override(get_config("tiny"), **settings["config"])
    result = train(config, progress=False, evaluate=False)
    row: dict[str, Any] = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if is_main_process():
        times = {r["step"]: r["time"] for r in result["metrics"]}
        warm, last = settings["warmup"], config.steps
        row["steps_per_s"] = (last - warm) / (times[last] - times[warm])
        row["loss"] = result["metrics"][-1]["loss"]
    print("BENCH " + json.dumps(row), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_layout(method: str, procs: int, devices: int, s: dict[str, Any], work: Path, timeout: float) -> dict:
    """Launch the ``procs`` processes of one layout and merge their reports."""
    out = work / f"{method}_{procs}x{devices}"
    config = {**s["config"], "method": method, "steps": s["steps"], "log_every": 1, "checkpoint_every": s["steps"],
              "out": str(out), "devices": procs * devices if procs == 1 else 0}  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    port = free_port()
    launched = []
    for i in range(procs):
        c = dict(config)
        if procs > 1:
            c |= {"distributed": True, "coordinator": f"localhost:{port}", "num_processes": procs, "process_id": i}
        argv = [sys.executable, __file__, "--worker", json.dumps({"config": c, "warmup": s["warmup"]})]
        launched.append(
            subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    start, reports = time.time(), []
    try:
        for p in launched:
            stdout, stderr = p.communicate(timeout=max(1.0, timeout - (time.time() - start)))
            if p.returncode != 0:
                raise RuntimeError(f"{method} {procs}x{devices} failed:\n{stderr[-2000:]}")
            reports.append(json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("BENCH "))[6:]))
    finally:
        for p in launched:
            if p.poll() is None:
                p.kill()
    main = reports[0]
    return {"method": method, "processes": procs, "devices_per_process": devices, "devices": procs * devices,
            "steps_per_s": main["steps_per_s"], "peak_rss_mb": max(r["rss_mb"] for r in reports),
            "final_loss": main["loss"], "wall_s": time.time() - start}  # fmt: skip


def markdown(rows: list[dict[str, Any]]) -> str:
    base = {r["method"]: r["steps_per_s"] for r in rows if r["devices"] == 1 and r["processes"] == 1}
    lines = ["| method | processes × devices | steps/s | × vs 1 device | peak RSS / process (MiB) | final loss |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        speedup = r["steps_per_s"] / base[r["method"]] if r["method"] in base else float("nan")
        lines.append(
            f"| {r['method']} | {r['processes']} × {r['devices_per_process']} | {r['steps_per_s']:.2f} | "
            f"{speedup:.2f} | {r['peak_rss_mb']:.0f} | {r['final_loss']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    s = QUICK if args.quick else FULL
    rows = []
    for method in s["methods"]:
        for procs, devices in s["layouts"]:
            row = run_layout(method, procs, devices, s, args.work, args.timeout)
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    command = " ".join(["python", "experiments/bench_distributed.py", *(argv if argv is not None else sys.argv[1:])])
    meta = {"settings": s, "machine": platform.platform(), "cpus": os.cpu_count(), "command": command,
            "load_average_at_end": load, "provenance": provenance()}  # fmt: skip
    (args.out / f"{NAME}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows)
    (args.out / f"{NAME}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
