"""CNN7's convolution layers alone: jaxcert (XLA) against PyTorch, part by part, and the levers that might help.

Per conv layer shape of CNN7 (``--arch``, default ``cnn7``; CIFAR-10 32×32×3 by default, ``--dataset
fashion_mnist`` for 28×28×1 as in ``bench_reference.py``) at ``--batch``, four parts (``--parts``):

    fwd    y = conv(x, W)
    dx     the input gradient  convᵀ_x(g)          (the backward pass through a layer)
    dw     the kernel gradient convᵀ_W(g)          (what training adds)
    ibp    conv(c, W) and conv(r, |W|)             (IBP's interval forward pass)

jaxcert variants (NHWC/HWIO): ``xla`` (``jax.lax.conv_general_dilated`` as ``jaxcert/nets/convolution.py``
calls it), ``nchw`` (the same convolution in NCHW/OIHW), ``im2col`` (``jaxcert/nets/conv_im2col.py``: patches
then one matrix product), ``slices`` (the kernel gradient as ``k²`` shifted-slice products,
``convolution.shifted_slices_conv2d``), ``grouped`` (IBP's two convolutions as one with
``feature_group_count=2``) and ``conv2d`` (``jaxcert.nets.convolution.conv2d``, what the library runs).
PyTorch (``torch.nn.functional.conv2d``, NCHW) runs in its own process with ``--reference VENV``'s
Python, ``torch.set_num_threads(threads)``. Each side's process pins itself to the same ``--threads`` CPUs.

Each jaxcert *configuration* is its own process with its own environment, set before JAX starts:
``default``, plus each ``--config NAME=VAR=VALUE[;VAR=VALUE]`` (e.g. ``XLA_FLAGS`` or ``GLIBC_TUNABLES``).
Rounds alternate the processes (configurations, then PyTorch); each figure is the best over rounds of the
fastest of ``--repeats`` calls after a warm-up call, with the peak resident memory of its process during
that part (:mod:`peak_memory`). Throughput = batch / seconds (examples per second); "vs torch" = torch's
seconds / ours in the same run. Table to stdout and ``--out``'s ``.md``, JSON to ``--out``.

    python experiments/bench_conv.py --reference /work/refvenv
    python experiments/bench_conv.py --reference /work/refvenv --config \\
        "malloc=GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=68719476736"
    python experiments/bench_conv.py --quick        # seconds: two tiny layers, jaxcert's default only
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sides import first_cpus, pin_to_side_cpus, run_plan_side, side_env

HERE = Path(__file__).resolve().parent
PARTS = ("fwd", "dx", "dw", "ibp")
JAX_VARIANTS = {
    "fwd": ("xla", "nchw", "im2col"),
    "dx": ("xla", "conv2d"),
    "dw": ("xla", "slices", "im2col", "conv2d"),
    "ibp": ("xla", "grouped", "conv2d"),
}


def layer_shapes(arch: str, dataset: str, quick: bool) -> list[dict[str, int]]:
    """The conv layers of ``arch`` as ``{height, width, cin, cout, kernel, stride, padding}`` (input side)."""
    if quick:
        return [dict(height=8, width=8, cin=2, cout=4, kernel=3, stride=1, padding=1),
                dict(height=8, width=8, cin=4, cout=4, kernel=3, stride=2, padding=1)]  # fmt: skip
    from jaxcert.nets import Conv, get_architecture

    shape = {"cifar10": (32, 32, 3), "fashion_mnist": (28, 28, 1)}[dataset]
    layers = []
    for layer in get_architecture(arch, 10, dataset):
        if isinstance(layer, Conv):
            h, w, c = shape
            layers.append(dict(height=h, width=w, cin=c, cout=layer.features, kernel=layer.kernel,
                               stride=layer.stride, padding=layer.padding))  # fmt: skip
        if len(shape) == 3:
            shape = layer.out_shape(shape)
    return layers


def label(layer: dict[str, int]) -> str:
    return f"{layer['height']}×{layer['width']} {layer['cin']}→{layer['cout']} k{layer['kernel']} s{layer['stride']}"


def best_seconds(call: Callable[[], Any], sync: Callable[[Any], Any], repeats: int) -> float:
    """Warm-up call, then the fastest of ``repeats`` calls."""
    sync(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return min(times)


def jax_parts(layer: dict[str, int], batch: int, parts: list[str]) -> dict[tuple[str, str], Callable[[], Any]]:
    """The compiled jaxcert calls of one layer, keyed by (part, variant)."""
    import jax
    import jax.numpy as jnp

    from jaxcert.nets.conv_im2col import im2col_conv2d
    from jaxcert.nets.convolution import conv2d, output_size, shifted_slices_conv2d, xla_conv2d

    k, s, p = layer["kernel"], layer["stride"], layer["padding"]
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, layer["height"], layer["width"], layer["cin"]))
    w = 0.1 * jax.random.normal(kw, (k, k, layer["cin"], layer["cout"]))
    out_h, out_w = output_size(layer["height"], k, s, p), output_size(layer["width"], k, s, p)
    g = jax.random.normal(kg, (batch, out_h, out_w, layer["cout"]))
    nchw = lambda a, b: jax.lax.conv_general_dilated(a, b, (s, s), ((p, p), (p, p)))  # NCHW / OIHW / NCHW
    convs = {"xla": xla_conv2d, "im2col": im2col_conv2d, "slices": shifted_slices_conv2d, "conv2d": conv2d}

    def kernel_gradient(conv: Callable[..., jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
        return lambda x_, g_: jax.vjp(lambda w_: conv(x_, w_, s, p), w)[1](g_)[0]

    def grouped_ibp(c: jax.Array, r: jax.Array, w_: jax.Array) -> jax.Array:
        both = jnp.concatenate([w_, jnp.abs(w_)], axis=-1)  # HWIO, groups along O: [W | |W|]
        return jax.lax.conv_general_dilated(
            jnp.concatenate([c, r], -1), both, (s, s), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2,
        )  # fmt: skip

    interval = (x, jnp.abs(x), w)  # center, radius, kernel
    work: dict[tuple[str, str], tuple[Callable[..., Any], tuple[Any, ...]]] = {
        ("fwd", "xla"): (lambda a, b: xla_conv2d(a, b, s, p), (x, w)),
        ("fwd", "nchw"): (nchw, (jnp.moveaxis(x, 3, 1), jnp.transpose(w, (3, 2, 0, 1)))),
        ("fwd", "im2col"): (lambda a, b: im2col_conv2d(a, b, s, p), (x, w)),
        ("dx", "xla"): (lambda a, g_: jax.vjp(lambda a_: xla_conv2d(a_, w, s, p), a)[1](g_)[0], (x, g)),
        ("dx", "conv2d"): (lambda a, g_: jax.vjp(lambda a_: conv2d(a_, w, s, p), a)[1](g_)[0], (x, g)),
        ("ibp", "xla"): (lambda c, r, w_: (xla_conv2d(c, w_, s, p), xla_conv2d(r, jnp.abs(w_), s, p)), interval),
        ("ibp", "grouped"): (grouped_ibp, interval),
        ("ibp", "conv2d"): (lambda c, r, w_: (conv2d(c, w_, s, p), conv2d(r, jnp.abs(w_), s, p)), interval),
    }  # fmt: skip
    for variant in JAX_VARIANTS["dw"]:
        work[("dw", variant)] = (kernel_gradient(convs[variant]), (x, g))
    calls = {}
    for key, (fn, args) in work.items():
        if key[0] not in parts:
            continue
        compiled = jax.jit(fn).lower(*args).compile()
        calls[key] = lambda compiled=compiled, args=args: compiled(*args)
    return calls


def torch_parts(layer: dict[str, int], batch: int, parts: list[str]) -> dict[tuple[str, str], Callable[[], Any]]:
    """PyTorch's calls of one layer (NCHW / OIHW), keyed by (part, "torch")."""
    import torch
    import torch.nn.functional as F

    k, s, p = layer["kernel"], layer["stride"], layer["padding"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, layer["cin"], layer["height"], layer["width"], generator=gen)
    w = 0.1 * torch.randn(layer["cout"], layer["cin"], k, k, generator=gen)
    g = torch.randn_like(F.conv2d(x, w, stride=s, padding=p))
    r = x.abs()
    calls = {
        ("fwd", "torch"): lambda: F.conv2d(x, w, stride=s, padding=p),
        ("dx", "torch"): lambda: torch.nn.grad.conv2d_input(x.shape, w, g, stride=s, padding=p),
        ("dw", "torch"): lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, stride=s, padding=p),
        ("ibp", "torch"): lambda: (F.conv2d(x, w, stride=s, padding=p), F.conv2d(r, w.abs(), stride=s, padding=p)),
    }
    return {key: call for key, call in calls.items() if key[0] in parts}


def side(plan: dict[str, Any]) -> dict[str, Any]:
    """Time every part of every layer in this process (a child: ``--side jax`` or ``--side torch``)."""
    from peak_memory import peak_gib, reset_peak

    if plan["side"] == "torch":
        import torch

        torch.set_num_threads(plan["threads"])
        torch.set_grad_enabled(False)
        make, sync, version = torch_parts, (lambda out: out), {"torch": torch.__version__}
    else:
        import jax

        make, sync = jax_parts, jax.block_until_ready
        version = {"jax": jax.__version__, "backend": jax.default_backend()}
    results = []
    for layer in plan["layers"]:
        for (part, variant), call in make(layer, plan["batch"], plan["parts"]).items():
            reset_peak()
            seconds = best_seconds(call, sync, plan["repeats"])
            results.append({"layer": label(layer), "part": part, "variant": variant, "seconds": seconds,
                            "peak_gib": peak_gib(), "load": os.getloadavg()[0]})  # fmt: skip
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return {**version, "results": results}


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=VAR=VALUE[;VAR=VALUE]`` → ``(NAME, {VAR: VALUE})``."""
    name, _, assignments = text.partition("=")
    env = dict(a.split("=", 1) for a in assignments.split(";") if a)
    if not name or not env or any(not var for var in env):
        raise argparse.ArgumentTypeError(f"--config {text!r}: expected NAME=VAR=VALUE[;VAR=VALUE]")
    return name, env


def markdown(result: dict[str, Any]) -> str:
    """One row per (layer, part, configuration/variant): ms, examples/s, peak GiB, torch's time / ours."""
    torch_best = {(r["layer"], r["part"]): r["seconds"] for r in result["rows"] if r["config"] == "torch"}
    lines = [
        f"{result['arch'].upper()} conv layers ({result['dataset']}, batch {result['batch']}, {result['threads']} "
        f"threads per process); best of {result['rounds']} alternating rounds × {result['repeats']} calls; "
        f"load average {result['load_before']:.2f} before, {result['load_after']:.2f} after (shared machine: "
        "only the ratios of one run compare).",
        "",
        "| layer | part | config | variant | ms | ex/s | peak GiB | vs torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ref = torch_best.get((r["layer"], r["part"]))
        ratio = "–" if ref is None else f"{ref / r['seconds']:.2f}"
        lines.append(
            f"| {r['layer']} | {r['part']} | {r['config']} | {r['variant']} | {1e3 * r['seconds']:.1f} | "
            f"{result['batch'] / r['seconds']:.0f} | {r['peak_gib']:.2f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, help="virtual environment with torch (the PyTorch side)")
    p.add_argument("--arch", choices=("cnn7", "cnn5", "cnn3"), default="cnn7", help="whose conv layers")
    p.add_argument("--dataset", choices=("cifar10", "fashion_mnist"), default="cifar10", help="the net's input")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (best counts)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per part and round")
    p.add_argument("--threads", type=int, default=2, help="CPUs / threads of each process")
    p.add_argument("--config", type=parse_config, action="append", default=[], metavar="NAME=VAR=VALUE[;...]",
                   help="another jaxcert process with these environment variables (repeatable)")  # fmt: skip
    p.add_argument("--layers", help="comma-separated layer indices (default: all)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one process may take")
    p.add_argument("--quick", action="store_true", help="two tiny layers, batch 4, one round")
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_conv.json")
    p.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)  # internal: a child
    p.add_argument("plan", nargs="*", help=argparse.SUPPRESS)  # internal: PLAN.json OUT.json of a child
    args = p.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; known: {', '.join(PARTS)}")
    if args.batch < 1 or args.rounds < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--batch, --rounds, --repeats and --threads must be >= 1")
    if args.reference and not (args.reference / "bin" / "python").is_file():
        p.error(f"--reference {args.reference}: no bin/python there")
    if args.quick:
        args.batch, args.rounds, args.repeats = 4, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.side:  # a child: pinned before its runtime starts threads
        pin_to_side_cpus()
        sys.path.insert(0, str(HERE))
        result = side(json.loads(Path(args.plan[0]).read_text()))
        Path(args.plan[1]).write_text(json.dumps(result))
        return result
    layers = layer_shapes(args.arch, args.dataset, args.quick)
    if args.layers:
        layers = [layers[int(i)] for i in args.layers.split(",")]
    plan = {"layers": layers, "parts": args.parts.split(","), "batch": args.batch, "repeats": args.repeats,
            "threads": args.threads, "cpus": first_cpus(args.threads)}  # fmt: skip
    this = [sys.executable, str(Path(__file__).resolve())]
    processes = [(name, [*this, "--side", "jax"], {**plan, "side": "jax"}, env)
                 for name, env in [("default", {}), *args.config]]  # fmt: skip
    if args.reference:
        torch_python = str(args.reference / "bin" / "python")
        processes.append(("torch", [torch_python, str(Path(__file__).resolve()), "--side", "torch"],
                          {**plan, "side": "torch"}, {}))  # fmt: skip
    load_before, best, versions = os.getloadavg()[0], {}, {}
    for number in range(args.rounds):
        for name, command, child_plan, env in processes:
            print(f"round {number + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            out = run_plan_side(command, child_plan, side_env(plan["cpus"], plan["threads"], env), args.timeout)
            versions[name] = {k: v for k, v in out.items() if k != "results"}
            for r in out["results"]:
                key = (name, r["layer"], r["part"], r["variant"])
                if key not in best or r["seconds"] < best[key]["seconds"]:
                    best[key] = {**r, "config": name}
    order = {label(layer): i for i, layer in enumerate(layers)}
    rows = sorted(best.values(), key=lambda r: (order[r["layer"]], PARTS.index(r["part"]), r["config"] == "torch"))
    result = {"arch": args.arch, "dataset": args.dataset, "batch": args.batch, "rounds": args.rounds,
              "repeats": args.repeats, "threads": args.threads, "configs": {n: e for n, _, _, e in processes},
              "versions": versions, "load_before": load_before, "load_after": os.getloadavg()[0],
              "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
