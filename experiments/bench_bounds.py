"""Throughput of the bound propagators: examples/s of each relaxation on CNN3 and CNN7.

For every (architecture, relaxation) pair it times the jitted margin lower bounds (labels random; what
certification and the certified loss use, :func:`jaxcert.bounds.margin_lower_bounds`) in the modes

* ``single``: one parameter set, throughput = batch / time;
* ``grad``:   a training step's work: the certified cross-entropy of the margin lower bounds and its
  gradient in the parameters, throughput = batch / time;
* ``fused``:  the training step's work with loss fusion (``crown-ibp`` only): the fused bound of the
  certified cross-entropy (one back-substituted row per example, :mod:`jaxcert.bounds.loss_fusion`)
  and its gradient, throughput = batch / time;
* ``vmap``:   ``jax.vmap`` over S parameter samples (as in Gaussian Loss Smoothing),
  throughput = batch * S / time (examples·samples/s);
* ``map``:    (optional, ``--modes``) ``jax.lax.map`` over the same S samples, one after the other: the
  sequential baseline for ``vmap`` (on CPU, vmapping convolutions over their kernels is slow).

A relaxation may carry options, ``name[key=value;...]`` (values parsed as Python literals), so that
alternatives run side by side in one call, e.g. ``crown,crown[patches=False],crown[unstable_budget=64]``
or ``crown-ibp,crown-ibp[bound_upper=True]`` (both sides back-substituted, as before one-sided margins).

Each program is compiled first (compile time reported, warm-up excluded from the timings); if XLA's
memory estimate (``compiled.memory_analysis()``) exceeds the memory limit, or anything raises, the pair is
recorded as skipped with the reason. Timings are the median of ``--repeats`` calls with
``block_until_ready``. Prints a markdown table and writes JSON (``--out``).

    python experiments/bench_bounds.py                      # CNN3 + CNN7, batch 128, 16 samples
    python experiments/bench_bounds.py --quick              # seconds: tiny net, tiny batch
    python experiments/bench_bounds.py --archs cnn3 --run runs/quickstart   # a trained net on test images

Without ``--run`` the weights are a random initialisation and the inputs uniform noise: nearly every
neuron is unstable there, while a certifiably trained net has few unstable neurons (what CROWN's
unstable-pair rows, :mod:`jaxcert.bounds.pair_rows`, exploit). ``--run DIR`` benchmarks the run's weights
on the first test images of its data set at the run's ε (the architecture must be the run's).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds import certified_cross_entropy, margin_lower_bounds, relaxation_names
from jaxcert.bounds.loss_fusion import fused_certified_loss
from jaxcert.nets import Conv, Dense, Flatten, Normalize, ReLU, get_architecture, init_params
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, merge, split_trainable
from jaxcert.provenance import provenance
from jaxcert.runs import load_run, load_test_split, run_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timed_calls import timed_call_count

GiB = 2**30

#: name -> (architecture builder, input shape, ε of the benchmark's input box)
BENCH_ARCHS: dict[str, tuple[Callable[[], Arch], tuple[int, ...], float]] = {
    "cnn3": (lambda: get_architecture("cnn3", dataset="fashion_mnist"), (28, 28, 1), 0.1),
    "cnn5": (lambda: get_architecture("cnn5", dataset="fashion_mnist"), (28, 28, 1), 0.1),
    "cnn7": (lambda: get_architecture("cnn7", dataset="cifar10"), (32, 32, 3), 2 / 255),
    "paradox_fc": (lambda: get_architecture("paradox_fc", dataset="fashion_mnist"), (28, 28, 1), 0.1),
    "paradox_conv": (lambda: get_architecture("paradox_conv", dataset="fashion_mnist"), (28, 28, 1), 0.1),
    "mlp_14x14": (lambda: get_architecture("mlp_14x14", dataset="fashion_mnist"), (28, 28, 1), 0.1),
    "tiny": (
        lambda: (Normalize((0.5,), (0.25,)), Conv(4, 3, 2, 1), ReLU(), Flatten(), Dense(8), ReLU(), Dense(10)),
        (8, 8, 1),
        0.1,
    ),
}

DEFAULTS = {
    "archs": "cnn3,cnn7",
    "relaxations": "ibp,hbox,deepz,crown,crown-ibp",
    "batch": 128,
    "samples": 16,
    "repeats": 3,
    "max_seconds": 60.0,
}
MODES = ("single", "grad", "fused", "vmap", "map")
QUICK = {"archs": "tiny", "batch": 4, "samples": 2, "repeats": 2, "max_seconds": 10.0}


def default_memory_limit() -> float:
    """Bytes a program may use: 90% of the accelerator's memory, or 50% of the host's available memory
    (XLA:CPU's estimate leaves out some buffers: a program estimated at 70% of this machine's memory was
    killed for lack of it)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return 0.9 * stats["bytes_limit"]
    try:
        return 0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 24.0 * GiB


def parameter_samples(params: LayerParams, samples: int, sigma: float, key: jax.Array) -> LayerParams:
    """``samples`` Gaussian perturbations ``θ + σ z`` of the trainable weights (stacked on axis 0);
    BatchNorm running statistics are copied unchanged."""
    trainable, frozen = split_trainable(params)
    leaves, treedef = jax.tree.flatten(trainable)
    keys = jax.random.split(key, len(leaves))
    noisy = [leaf + sigma * jax.random.normal(k, (samples, *leaf.shape)) for leaf, k in zip(leaves, keys, strict=True)]
    stacked_frozen = jax.tree.map(lambda a: jnp.broadcast_to(a, (samples, *a.shape)), frozen)
    return merge(jax.tree.unflatten(treedef, noisy), stacked_frozen)


def parse_relaxation(entry: str) -> tuple[str, dict[str, Any]]:
    """``"name[key=value;...]"`` -> ``(name, {key: literal value})``; a plain name has no options."""
    name, _, rest = entry.partition("[")
    options: dict[str, Any] = {}
    if rest:
        if not rest.endswith("]"):
            raise ValueError(f"bad relaxation entry {entry!r}: expected name[key=value;...]")
        for item in filter(None, rest[:-1].split(";")):
            key, _, value = item.partition("=")
            options[key.strip()] = ast.literal_eval(value.strip())
    return name, options


def margin_fn(arch: Arch, entry: str, *, grad: bool = False, fused: bool = False) -> Callable[..., Any]:
    """``(params, x, eps, y) ->`` margin lower bounds by ``entry`` (see :func:`parse_relaxation`), or with
    ``grad`` the mean certified cross-entropy of them and its gradient in the parameters, or with ``fused``
    the mean fused certified loss (``crown-ibp`` only) and its gradient."""
    name, options = parse_relaxation(entry)
    if fused:
        if name != "crown-ibp":
            raise ValueError(f"loss fusion is CROWN-IBP's training loss, not {name!r}'s")
        fused_loss = lambda params, x, eps, y: jnp.mean(fused_certified_loss(arch, params, x, y, eps, **options).loss)
        return jax.value_and_grad(fused_loss)

    def bounds(params: LayerParams, x: jax.Array, eps: Any, y: jax.Array) -> jax.Array:
        return margin_lower_bounds(arch, params, x, y, eps, relaxation=name, **options)

    if not grad:
        return bounds
    loss = lambda params, x, eps, y: jnp.mean(certified_cross_entropy(bounds(params, x, eps, y)))
    return jax.value_and_grad(loss)


def batched_over_samples(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """``fn(params, x, eps, y)`` over a leading axis of parameter samples: ``jax.vmap`` or ``jax.lax.map``."""
    if mode == "vmap":
        return jax.vmap(fn, in_axes=(0, None, None, None))
    return lambda params, x, eps, y: jax.lax.map(lambda p: fn(p, x, eps, y), params)


def estimated_bytes(compiled: Any) -> float | None:
    """XLA's estimate of the memory one call needs (arguments + outputs + temporaries), if available."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def time_calls(
    call: Callable[[], Any], repeats: int, max_seconds: float, min_seconds: float = 0.0
) -> tuple[list[float], float]:
    """Warm-up call (excluded), then :func:`timed_calls.timed_call_count` timed calls: ``repeats``, more for
    short calls when ``min_seconds`` > 0, fewer if one call is so slow that the repeats would exceed
    ``max_seconds`` (at least one). Returns (times, warm-up seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(call())
    warmup = time.perf_counter() - start
    times = []
    for _ in range(timed_call_count(repeats, warmup, max_seconds, min_seconds)):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return times, warmup


def bench_one(
    arch_name: str,
    relaxation: str,
    mode: str,
    *,
    batch: int,
    samples: int,
    repeats: int,
    max_seconds: float,
    memory_limit: float,
    seed: int = 0,
    compile_only: bool = False,
    run_dir: str | None = None,
) -> dict[str, Any]:
    """Benchmark one (architecture, relaxation, mode) triple; never raises (errors become 'skipped').
    ``run_dir``: the trained weights, test images and ε of that run instead of random ones."""
    build, in_shape, eps = BENCH_ARCHS[arch_name]
    if run_dir is not None:
        eps = run_config(run_dir).eps
    n = batch * (samples if mode in ("vmap", "map") else 1)
    row: dict[str, Any] = {
        "arch": arch_name,
        "relaxation": relaxation,
        "mode": mode,
        "batch": batch,
        "samples": samples if mode in ("vmap", "map") else 1,
        "eps": eps,
        "status": "skipped",
        "reason": None,
        "run": run_dir,
    }
    try:
        arch = build()
        params = init_params(arch, in_shape, seed=seed)
        kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
        x = jax.random.uniform(kx, (batch, *in_shape))
        y = jax.random.randint(ky, (batch,), 0, arch[-1].features)
        if run_dir is not None:
            arch, params, x, y = trained_case(run_dir, arch, batch)
        fn = margin_fn(arch, relaxation, grad=mode == "grad", fused=mode == "fused")
        if mode in ("vmap", "map"):
            params = parameter_samples(params, samples, 1e-2, kp)
            fn = batched_over_samples(fn, mode)
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(params, x, eps, y).compile()
        row["compile_s"] = time.perf_counter() - start
        needed = estimated_bytes(compiled)
        row["memory_gib"] = None if needed is None else needed / GiB
        if needed is not None and needed > memory_limit:
            row["reason"] = f"estimated memory {needed / GiB:.1f} GiB > limit {memory_limit / GiB:.1f} GiB"
            return row
        if compile_only:
            row.update(status="compiled", reason="compiled only (--compile-only): memory estimate, no timing")
            return row
        times, warmup = time_calls(lambda: compiled(params, x, eps, y), repeats, max_seconds)
    except Exception as err:  # a relaxation that fails is reported, not fatal
        row["reason"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        return row
    median = statistics.median(times)
    row.update(status="ok", warmup_s=warmup, repeats=len(times), median_s=median, times_s=times, throughput=n / median)
    return row


def trained_case(run_dir: str, arch: Arch, batch: int) -> tuple[Arch, LayerParams, jax.Array, jax.Array]:
    """``(arch, params, x, y)`` of a trained run: its weights and the first ``batch`` test images and labels;
    ``ValueError`` unless the run's architecture is ``arch``."""
    run_arch, params, config = load_run(run_dir)
    if tuple(run_arch) != tuple(arch):
        raise ValueError(f"--run {run_dir}: its architecture is {config.arch!r}, not the benchmark's")
    test = load_test_split(config, limit=batch)
    if len(test.y) < batch:
        raise ValueError(f"--run {run_dir}: {len(test.y)} test examples, fewer than the batch {batch}")
    return run_arch, params, jnp.asarray(test.x), jnp.asarray(test.y)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per entry; throughput is examples/s (single) or examples·samples/s (vmap)."""
    head = ["arch", "relaxation", "mode", "batch×samples", "median ms", "throughput", "est. GiB", "compile s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda value, spec: "–" if value is None else format(value, spec)
    for r in rows:
        ok = r["status"] == "ok"
        cells = [
            r["arch"],
            r["relaxation"],
            r["mode"],
            f"{r['batch']}×{r['samples']}",
            fmt(1e3 * r["median_s"] if ok else None, ".1f"),
            fmt(r.get("throughput"), ".1f"),
            fmt(r.get("memory_gib"), ".2f"),
            fmt(r.get("compile_s"), ".1f"),
            "" if ok else (r["reason"] if r["status"] == "compiled" else f"skipped: {r['reason']}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", help=f"comma-separated, from {sorted(BENCH_ARCHS)} (default {DEFAULTS['archs']})")
    parser.add_argument("--relaxations", help=f"comma-separated (default {DEFAULTS['relaxations']})")
    parser.add_argument("--batch", type=int, help=f"examples per call (default {DEFAULTS['batch']})")
    parser.add_argument("--samples", type=int, help=f"parameter samples in vmap mode (default {DEFAULTS['samples']})")
    parser.add_argument("--repeats", type=int, help=f"timed calls per entry (default {DEFAULTS['repeats']})")
    parser.add_argument("--max-seconds", type=float, help="time budget of the timed calls of one entry")
    parser.add_argument("--memory-gb", type=float, help="memory limit in GiB (default: from the machine)")
    parser.add_argument("--modes", default="single,vmap", help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    parser.add_argument("--compile-only", action="store_true", help="XLA's memory estimate only, no timed calls")
    parser.add_argument("--run", help="a training run's folder: its weights, test images and ε (see the doc)")
    parser.add_argument("--out", default="experiments/results/bench_bounds.json", help="JSON output path")
    args = parser.parse_args(argv)
    for name, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = [a for a in args.archs.split(",") if a not in BENCH_ARCHS]
    if unknown:
        parser.error(f"unknown architectures {unknown}; known: {sorted(BENCH_ARCHS)}")
    bad_modes = [m for m in args.modes.split(",") if m not in MODES]
    if bad_modes:
        parser.error(f"unknown modes {bad_modes}; known: {', '.join(MODES)}")
    if args.batch < 1 or args.samples < 1 or args.repeats < 1:
        parser.error("--batch, --samples and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    memory_limit = args.memory_gb * GiB if args.memory_gb is not None else default_memory_limit()
    registered = set(relaxation_names())
    rows, notes = [], []
    for relaxation in args.relaxations.split(","):
        if parse_relaxation(relaxation)[0] not in registered:
            notes.append(f"{relaxation}: not registered (known: {', '.join(sorted(registered))})")
    for arch_name in args.archs.split(","):
        for relaxation in args.relaxations.split(","):
            for mode in args.modes.split(","):
                if parse_relaxation(relaxation)[0] not in registered:
                    row = {
                        "arch": arch_name,
                        "relaxation": relaxation,
                        "mode": mode,
                        "batch": args.batch,
                        "samples": args.samples if mode in ("vmap", "map") else 1,
                        "status": "skipped",
                        "reason": "not registered",
                    }
                else:
                    row = bench_one(
                        arch_name,
                        relaxation,
                        mode,
                        batch=args.batch,
                        samples=args.samples,
                        repeats=args.repeats,
                        max_seconds=args.max_seconds,
                        memory_limit=memory_limit,
                        compile_only=args.compile_only,
                        run_dir=args.run,
                    )
                rows.append(row)
                print(
                    f"{arch_name:>12} {relaxation:>10} {mode:>6}: "
                    + (f"{row['throughput']:.1f} ex/s" if row["status"] == "ok" else f"skipped ({row['reason']})"),
                    file=sys.stderr,
                    flush=True,
                )
    result = {
        "config": {
            k: getattr(args, k)
            for k in ("archs", "relaxations", "batch", "samples", "repeats", "modes", "max_seconds", "quick", "run")
        },
        "memory_limit_gib": memory_limit / GiB,
        "device": str(jax.devices()[0]),
        "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "notes": notes,
        "results": rows,
        "provenance": provenance(),
    }
    print(markdown_table(rows))
    for note in notes:
        print(f"note: {note}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
