"""Training-step cost of the certified-training methods: examples/s and XLA's memory estimate.

For every method it builds the run's trainer (:func:`jaxcert.train.loop.make_trainer`, the same program as
``python -m jaxcert.train --method NAME``) and times its jitted step (the objective, its gradient or GLS
estimate, and the optimiser update) on one batch:

* ``standard``, ``pgd`` (PGD training, ``attack_steps`` steps), ``certified`` (IBP);
* the state-of-the-art objectives ``sabr``, ``taps``, ``staps``, ``mtl-ibp``, ``cc-ibp``, ``exp-ibp``;
* ``rgs:OBJ`` (RGS with ``samples`` members of the objective ``OBJ``; by default k = 2 of ``certified``,
  ``sabr``, ``taps`` and ``mtl-ibp``), ``pgpe:OBJ`` likewise (``population``).

TAPS/STAPS run their default multi-estimator (one latent PGD per margin, ``attack_steps`` steps); SABR its
decayed-step PGD over the ε-box.

Throughput = batch / median step time (examples/s; GLS: examples of the batch, all members together). The
memory column is XLA's estimate of one step (arguments + outputs + temporaries, ``compiled.memory_analysis()``,
as in ``bench_bounds.py``): on CPUs the peak a step needs. Prints a markdown table and writes JSON (``--out``).

    python experiments/bench_methods.py                 # CNN3, batch 128, 8 PGD steps (the papers')
    python experiments/bench_methods.py --quick         # seconds: mlp_small on spheres-sized inputs, batch 8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax

from jaxcert.nets import get_architecture
from jaxcert.provenance import provenance
from jaxcert.train.configs import TrainConfig
from jaxcert.train.loop import initial_params, make_trainer


def _bench_bounds() -> Any:
    """``experiments/bench_bounds.py`` as a module (its timing and memory helpers)."""
    spec = importlib.util.spec_from_file_location("bench_bounds", Path(__file__).with_name("bench_bounds.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BB = _bench_bounds()
GiB = BB.GiB
#: Every method, and GLS (RGS) of the plain certified loss, SABR, TAPS and MTL-IBP.
METHODS = "standard,pgd,certified,sabr,taps,staps,mtl-ibp,cc-ibp,exp-ibp,rgs:certified,rgs:sabr,rgs:taps,rgs:mtl-ibp"
DEFAULTS = {"arch": "cnn3", "batch": 128, "attack_steps": 8, "samples": 2, "population": 16, "repeats": 5}
QUICK = {"arch": "mlp_small", "batch": 8, "attack_steps": 2, "samples": 2, "population": 4, "repeats": 2}
#: input shape and ε of each architecture's data set
DATA = {"cnn3": ((28, 28, 1), 0.1), "cnn7": ((32, 32, 3), 2 / 255), "mlp_small": ((28, 28, 1), 0.1)}


def method_config(entry: str, args: argparse.Namespace) -> TrainConfig:
    """The config of ``entry`` (``NAME`` or ``GLS:OBJECTIVE``) at full ε from the first step (no warm-up)."""
    method, _, objective = entry.partition(":")
    _, eps = DATA[args.arch]
    return TrainConfig(
        method=method, objective=objective or "certified", arch=args.arch, eps=eps, warmup_frac=0.0, ramp_frac=0.0,
        batch_size=args.batch, attack_steps=args.attack_steps, samples=args.samples, population=args.population,
        init="default", steps=1000,
    )  # fmt: skip


def bench_method(entry: str, args: argparse.Namespace, memory_limit: float) -> dict[str, Any]:
    """One row: compile time, XLA's memory estimate, median step time and throughput; never raises."""
    row: dict[str, Any] = {"method": entry, "arch": args.arch, "batch": args.batch, "status": "skipped", "reason": None}
    try:
        config = method_config(entry, args)
        in_shape, _ = DATA[args.arch]
        arch = get_architecture(args.arch, 10, "fashion_mnist")
        params = initial_params(config, arch, in_shape)
        trainer = make_trainer(config, arch, params, (0.0, 1.0))
        state = trainer.init(params)
        kx, ky, key = jax.random.split(jax.random.key(0), 3)
        x = jax.random.uniform(kx, (args.batch, *in_shape))
        y = jax.random.randint(ky, (args.batch,), 0, 10)
        start = time.perf_counter()
        compiled = trainer.step.lower(state, x, y, key).compile()
        row["compile_s"] = time.perf_counter() - start
        needed = BB.estimated_bytes(compiled)
        row["memory_gib"] = None if needed is None else needed / GiB
        if needed is not None and needed > memory_limit:
            row["reason"] = f"estimated memory {needed / GiB:.1f} GiB > limit {memory_limit / GiB:.1f} GiB"
            return row
        times, warmup = BB.time_calls(lambda: compiled(state, x, y, key), args.repeats, args.max_seconds)
    except Exception as err:  # a failing method is reported, not fatal
        row["reason"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        return row
    median = statistics.median(times)
    row.update(status="ok", warmup_s=warmup, repeats=len(times), median_s=median, times_s=times)
    row["throughput"] = args.batch / median
    return row


def markdown_table(rows: list[dict[str, Any]], base: float | None) -> str:
    """One line per method; ``× certified`` is the step time relative to plain IBP certified training."""
    head = ["method", "arch", "batch", "median ms", "examples/s", "× certified", "est. GiB", "compile s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda value, spec: "–" if value is None else format(value, spec)
    for r in rows:
        ok = r["status"] == "ok"
        ratio = r["median_s"] / base if ok and base else None
        cells = [
            r["method"], r["arch"], str(r["batch"]), fmt(1e3 * r["median_s"] if ok else None, ".1f"),
            fmt(r.get("throughput"), ".0f"), fmt(ratio, ".2f"), fmt(r.get("memory_gib"), ".3f"),
            fmt(r.get("compile_s"), ".1f"), "" if ok else f"skipped: {r['reason']}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=METHODS, help="comma list of NAME or GLS:OBJECTIVE (rgs:sabr, pgpe:cc-ibp)")
    p.add_argument("--arch", choices=sorted(DATA), help=f"default {DEFAULTS['arch']}")
    for name in ("batch", "attack_steps", "samples", "population", "repeats"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {DEFAULTS[name]}")
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on the timed calls of one method")
    p.add_argument("--memory-gb", type=float, help="memory limit in GiB (default: from the machine)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")
    p.add_argument("--out", default="experiments/results/bench_methods.json", help="JSON output path")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    memory_limit = args.memory_gb * GiB if args.memory_gb is not None else BB.default_memory_limit()
    rows = []
    for entry in args.methods.split(","):
        row = bench_method(entry, args, memory_limit)
        rows.append(row)
        shown = f"{row['throughput']:.0f} ex/s" if row["status"] == "ok" else f"skipped ({row['reason']})"
        print(f"{entry:>16}: {shown}", file=sys.stderr, flush=True)
    base = next((r["median_s"] for r in rows if r["method"] == "certified" and r["status"] == "ok"), None)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    result = {
        "config": {k: getattr(args, k) for k in ("methods", *DEFAULTS, "max_seconds", "quick")},
        "memory_limit_gib": memory_limit / GiB,
        "device": str(jax.devices()[0]),
        "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "results": rows,
        "provenance": provenance(),
    }
    print(markdown_table(rows, base))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
