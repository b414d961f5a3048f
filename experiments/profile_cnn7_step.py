"""CNN7's IBP training step, stage by stage: jaxcert against the PyTorch reference (issue 19).

The step is exactly ``bench_reference.py``'s ``cnn7-ibp-train`` work (value and gradient of the mean certified
cross-entropy of IBP margin bounds, random-init weights on uniform inputs, Fashion-MNIST shapes). Its stages
are timed as separate calls of the same shapes on each side, each side in its own process pinned to the same
``--threads`` CPUs:

    fwd   per layer, the interval pair      y_c = W·c,  y_r = |W|·r             (convolution or Dense)
    dx    its input gradients               Wᵀ·g_c,  |W|ᵀ·g_r                   (not for the first layer)
    dW    its kernel gradient               ∂W = P(c)ᵀ g_c + sign(W) ⊙ P(r)ᵀ g_r
    rest  the whole step minus those stages (normalisation, the ReLU intervals, the margins and the loss, the
          elementwise backward, the bias gradients, and what runs between thunks)

For every call: the wall time and the process's CPU time (user + system, every thread), the best of
``--repeats`` calls after a warm-up, best over ``--rounds`` alternating rounds, and the page faults of one
whole step. On a loaded machine the CPU seconds compare better than the wall: a process that waits for a
core does not spend CPU. The reference side runs with ``OMP_WAIT_POLICY=PASSIVE`` so that its CPU time
does not count OpenMP threads spinning at barriers (``bench_reference.py`` keeps the default policy).

``--trace`` adds jaxcert's per-HLO attribution of the whole step: a ``jax.profiler`` trace, each XLA:CPU
thunk event mapped to its instruction in the optimised HLO, summed per stage (thunk wall ms per step;
thunks of the two threads overlap, so the sum exceeds the step's wall time).

``--baseline DIR`` times another jaxcert checkout's side too (e.g. ``git archive main | tar -x -C DIR``), in
its own process alternating with the others, for before/after figures from one run; ``--arch`` profiles
another architecture's IBP step (CNN3, CNN5) the same way.

    python experiments/profile_cnn7_step.py --reference /work/refvenv --trace
    python experiments/profile_cnn7_step.py --reference /work/refvenv --baseline /tmp/base --arch cnn3
    python experiments/profile_cnn7_step.py --quick        # seconds: tiny net, jaxcert side only
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sides import REPO, first_cpus, pin_to_side_cpus, run_plan_side, side_env

HERE = Path(__file__).resolve().parent


def layer_plan(arch_name: str) -> list[dict[str, Any]]:
    """The affine layers of ``arch`` as dicts: kind, input shape (H, W, C or features), kernel shape, stride,
    padding, and whether its input gradient is needed (every layer but the first)."""
    sys.path.insert(0, str(HERE))
    from bench_reference import architecture

    from jaxcert.nets import Conv, Dense

    arch, shape = architecture(arch_name)
    layers: list[dict[str, Any]] = []
    dense = [i for i, layer in enumerate(arch) if isinstance(layer, Dense)]
    for i, layer in enumerate(arch):
        if isinstance(layer, Conv):
            kernel = [layer.kernel, layer.kernel, shape[-1], layer.features]
            layers.append(dict(kind="conv", shape=list(shape), kernel=kernel, stride=layer.stride,
                               padding=layer.padding, dx=bool(layers)))  # fmt: skip
        elif isinstance(layer, Dense) and i != dense[-1]:  # the last one is folded into the margins
            size = math.prod(shape)
            layers.append(dict(kind="dense", shape=[size], kernel=[size, layer.features], dx=bool(layers)))
        shape = layer.out_shape(shape)
    return layers


def layer_label(layer: dict[str, Any]) -> str:
    if layer["kind"] == "dense":
        return f"dense {layer['kernel'][0]}→{layer['kernel'][1]}"
    h, w, _ = layer["shape"]
    _, _, cin, cout = layer["kernel"]
    return f"conv {h}×{w} {cin}→{cout}" + (f" s{layer['stride']}" if layer["stride"] != 1 else "")


def measure(call: Callable[[], Any], sync: Callable[[Any], Any], repeats: int) -> dict[str, float]:
    """Warm-up, then ``repeats`` calls: the least wall ms and the least CPU ms (user + system, all threads)."""
    sync(call())
    walls, cpus = [], []
    for _ in range(repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        sync(call())
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        walls.append(1e3 * (t1 - t0))
        cpus.append(1e3 * (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime))
    return {"wall_ms": min(walls), "cpu_ms": min(cpus)}


def faults(call: Callable[[], Any], sync: Callable[[Any], Any]) -> int:
    """Minor page faults of one call (after the warm-up ``measure`` did)."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    sync(call())
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0.ru_minflt


# ----------------------------------------------------------------------------------------------- jaxcert side
def jax_stage_calls(layer: dict[str, Any], batch: int) -> dict[str, Callable[[], Any]]:
    """Compiled jaxcert calls of one layer's stages (the library's own convolution, ``conv2d``)."""
    import jax
    import jax.numpy as jnp

    from jaxcert.nets.convolution import conv2d

    kc, kr, kw, kg = jax.random.split(jax.random.key(0), 4)
    c = jax.random.uniform(kc, (batch, *layer["shape"]))
    r = 0.1 * jax.random.uniform(kr, c.shape)
    w = 0.05 * jax.random.normal(kw, layer["kernel"])
    if layer["kind"] == "conv":
        lin = lambda x, k: conv2d(x, k, layer["stride"], layer["padding"])
    else:
        lin = lambda x, k: x @ k
    pair = lambda c_, r_, w_: (lin(c_, w_), lin(r_, jnp.abs(w_)))
    gc, gr = (jax.random.normal(kg, y.shape) for y in jax.eval_shape(pair, c, r, w))
    work: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
        "fwd": (pair, (c, r, w)),
        "dW": (lambda c_, r_, w_, a, b: jax.vjp(lambda k: pair(c_, r_, k), w_)[1]((a, b))[0], (c, r, w, gc, gr)),
    }
    if layer["dx"]:
        work["dx"] = (lambda c_, r_, w_, a, b: jax.vjp(lambda x, y: pair(x, y, w_), c_, r_)[1]((a, b)),
                      (c, r, w, gc, gr))  # fmt: skip
    calls = {}
    for stage, (fn, args) in work.items():
        compiled = jax.jit(fn).lower(*args).compile()
        calls[stage] = lambda compiled=compiled, args=args: compiled(*args)
    return calls


def jax_step(arch_name: str, batch: int) -> tuple[Callable[[], Any], Any]:
    """``bench_reference.jaxcert_work``'s train call of IBP on ``arch_name``, and its compiled program."""
    import jax
    import jax.numpy as jnp
    from bench_reference import EPS, architecture

    from jaxcert.bounds import certified_cross_entropy, margin_lower_bounds
    from jaxcert.nets import init_params

    arch, in_shape = architecture(arch_name)
    params = init_params(arch, in_shape, seed=0)
    kx, ky = jax.random.split(jax.random.key(0))
    x, y = jax.random.uniform(kx, (batch, *in_shape)), jax.random.randint(ky, (batch,), 0, 10)

    def loss(p: Any, x_: jax.Array, y_: jax.Array) -> jax.Array:
        return jnp.mean(certified_cross_entropy(margin_lower_bounds(arch, p, x_, y_, EPS, relaxation="ibp")))

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, x, y).compile()
    return (lambda: compiled(params, x, y)), compiled


def hlo_instructions(text: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Instruction name → {computation, opcode, op_name metadata, text}, and while-body computation → while."""
    info: dict[str, dict[str, str]] = {}
    body_of: dict[str, str] = {}
    computation = ""
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%(\S+) .*\{\s*$", line)
        if header:
            computation = header.group(1)
            continue
        inst = re.match(r"^\s+(?:ROOT )?%(\S+) = .*? ([a-z][a-z0-9-]*)\(", line)
        if not inst:
            continue
        name, opcode = inst.groups()
        meta = re.search(r'op_name="([^"]*)"', line)
        info[name] = {"computation": computation, "opcode": opcode, "meta": meta.group(1) if meta else "", "text": line}
        for body in re.findall(r"body=%([^,\s]+)", line):
            body_of[body] = name
    return info, body_of


def hlo_stage(name: str, info: dict[str, dict[str, str]], body_of: dict[str, str]) -> str:
    """The stage an HLO instruction belongs to (see the module docstring), from its metadata and shapes."""
    inst = info[name]
    if inst["computation"] in body_of:  # the im2col-scan loop of a kernel gradient
        kernel = re.search(r"f32\[(\d+),(\d+),(\d+),(\d+)\]", info[body_of[inst["computation"]]]["text"])
        return f"dW conv {kernel.group(3)}→{kernel.group(4)} (loop)" if kernel else "dW (loop)"
    meta, backward = inst["meta"], "transpose(" in inst["meta"]
    if "conv_general_dilated" in meta or inst["opcode"] == "convolution":
        out = re.search(r"= f32\[\d+,(\d+),(\d+),(\d+)\]", inst["text"])
        where = f" (out {out.group(1)}×{out.group(2)}×{out.group(3)})" if out else ""
        return ("dx conv" if backward else "fwd conv") + where
    if "dot_general" in meta or inst["opcode"] == "dot":
        return "bwd dense (dx, dW)" if backward else "fwd dense"
    if inst["opcode"] == "while":
        return "dW (loop control)"
    return "bwd elementwise, bias sums" if backward else "fwd elementwise, loss"


def trace_stages(call: Callable[[], Any], compiled: Any, steps: int = 2) -> dict[str, float]:
    """Thunk wall ms per step and stage, from a ``jax.profiler`` trace of ``steps`` calls."""
    import jax

    info, body_of = hlo_instructions(compiled.as_text())
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(steps):
                jax.block_until_ready(call())
        data = jax.profiler.ProfileData.from_file(sorted(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True))[-1])
    totals: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in info:
                    totals[hlo_stage(event.name, info, body_of)] += event.duration_ns / 1e6 / steps
    return dict(sorted(totals.items()))


def jax_side(plan: dict[str, Any]) -> dict[str, Any]:
    import jax

    sys.path.insert(0, str(HERE))
    sync = jax.block_until_ready
    step, compiled = jax_step(plan["arch"], plan["batch"])
    out: dict[str, Any] = {"step": measure(step, sync, plan["repeats"]), "faults": faults(step, sync)}
    cost = compiled.cost_analysis()
    out["step"].update(gflop=cost.get("flops", 0) / 1e9, gbytes=cost.get("bytes accessed", 0) / 1e9)
    out["stages"] = {}
    for number, layer in enumerate(plan["layers"], 1):
        for stage, call in jax_stage_calls(layer, plan["batch"]).items():
            out["stages"][f"{number}. {layer_label(layer)}|{stage}"] = measure(call, sync, plan["repeats"])
    if plan.get("trace"):
        out["trace"] = trace_stages(step, compiled)
    return {"jax": jax.__version__, **out}


# ----------------------------------------------------------------------------------------------- torch side
def torch_stage_calls(layer: dict[str, Any], batch: int) -> dict[str, Callable[[], Any]]:
    """PyTorch's calls of one layer's stages (NCHW, OIHW; the kernels autograd runs)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    if layer["kind"] == "conv":
        h, w_, cin = layer["shape"]
        k, _, _, cout = layer["kernel"]
        s, p = layer["stride"], layer["padding"]
        c = torch.rand(batch, cin, h, w_, generator=gen)
        w = 0.05 * torch.randn(cout, cin, k, k, generator=gen)
        lin = lambda x, k_: F.conv2d(x, k_, stride=s, padding=p)
        dx = lambda g, k_: torch.nn.grad.conv2d_input(c.shape, k_, g, stride=s, padding=p)
        dw = lambda x, g: torch.nn.grad.conv2d_weight(x, w.shape, g, stride=s, padding=p)
    else:
        c = torch.rand(batch, layer["kernel"][0], generator=gen)
        w = 0.05 * torch.randn(layer["kernel"][1], layer["kernel"][0], generator=gen)
        lin, dx, dw = F.linear, (lambda g, k_: g @ k_), (lambda x, g: g.t() @ x)
    r = 0.1 * torch.rand(c.shape, generator=gen)
    gc, gr = torch.randn_like(lin(c, w)), torch.randn_like(lin(c, w))
    calls = {
        "fwd": lambda: (lin(c, w), lin(r, w.abs())),
        "dW": lambda: dw(c, gc) + torch.sign(w) * dw(r, gr),
    }
    if layer["dx"]:
        calls["dx"] = lambda: (dx(gc, w), dx(gr, w.abs()))
    return calls


def torch_side(plan: dict[str, Any]) -> dict[str, Any]:
    import reference_lirpa as ref
    import torch

    torch.set_num_threads(plan["threads"])
    case = ref.Case(ref.load_case(plan["case"]), plan["batch"], 1e-5)
    step = lambda: case.work("train", "IBP", 1, 0.0)
    sync = lambda out: out
    out: dict[str, Any] = {"step": measure(step, sync, plan["repeats"]), "faults": faults(step, sync)}
    out["stages"] = {}
    with torch.no_grad():
        for number, layer in enumerate(plan["layers"], 1):
            for stage, call in torch_stage_calls(layer, plan["batch"]).items():
                out["stages"][f"{number}. {layer_label(layer)}|{stage}"] = measure(call, sync, plan["repeats"])
    return {"torch": torch.__version__, **out}


# ----------------------------------------------------------------------------------------------- driver
def best_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per entry, the least wall and the least CPU over the rounds."""
    first = results[0]
    merged = {**first, "step": {**first["step"]}, "stages": {}}
    for key in ("wall_ms", "cpu_ms"):
        merged["step"][key] = min(r["step"][key] for r in results)
    for name in first["stages"]:
        merged["stages"][name] = {k: min(r["stages"][name][k] for r in results) for k in ("wall_ms", "cpu_ms")}
    return merged


def markdown(result: dict[str, Any]) -> str:
    sides = result["sides"]
    jx, ref, base = sides["jaxcert"], sides.get("reference"), sides.get("baseline")
    head = (f"{result.get('arch', 'cnn7').upper()} IBP train step, batch {result['batch']}, {result['threads']} "
            f"threads per process, best of {result['rounds']} alternating rounds × {result['repeats']} calls; load "
            f"average {result['load_before']:.2f} before, {result['load_after']:.2f} after. ms per call: wall / CPU "
            "(user + system, all threads).")  # fmt: skip
    if base:
        head += f" Baseline: the jaxcert checkout {result['baseline']}."
    base_head = " baseline CPU | CPU baseline / jaxcert |" if base else ""
    lines = [head, "", "| stage | jaxcert wall | jaxcert CPU | reference wall | reference CPU | CPU ref / jaxcert |"
             + base_head, "|---|---|---|---|---|---|" + ("---|---|" if base else "")]  # fmt: skip
    cell = lambda d, k: "–" if d is None else f"{d[k]:.1f}"

    def base_cells(b: dict[str, float] | None, j: dict[str, float]) -> str:
        if not base:
            return ""
        return f" {cell(b, 'cpu_ms')} | " + ("–" if b is None else f"{b['cpu_ms'] / j['cpu_ms']:.2f}") + " |"

    totals = {"jaxcert": [0.0, 0.0], "reference": [0.0, 0.0], "baseline": [0.0, 0.0]}
    for name, j in jx["stages"].items():
        r = ref["stages"].get(name) if ref else None
        b = base["stages"].get(name) if base else None
        for side, d in (("jaxcert", j), ("reference", r), ("baseline", b)):
            if d is not None:
                totals[side][0] += d["wall_ms"]
                totals[side][1] += d["cpu_ms"]
        ratio = "–" if r is None else f"{r['cpu_ms'] / j['cpu_ms']:.2f}"
        lines.append(f"| {name.replace('|', ' ')} | {cell(j, 'wall_ms')} | {cell(j, 'cpu_ms')} | "
                     f"{cell(r, 'wall_ms')} | {cell(r, 'cpu_ms')} | {ratio} |" + base_cells(b, j))  # fmt: skip
    rest = {s: (sides[s]["step"]["wall_ms"] - t[0], sides[s]["step"]["cpu_ms"] - t[1]) for s, t in totals.items()
            if s in sides}  # fmt: skip
    fmt_pair = lambda s, i: f"{rest[s][i]:.1f}" if s in rest else "–"
    ref_sum = f"{totals['reference'][0]:.1f} | {totals['reference'][1]:.1f}" if ref else "– | –"
    sum_ratio = f"{totals['reference'][1] / totals['jaxcert'][1]:.2f}" if ref else "–"
    jax_sum = f"{totals['jaxcert'][0]:.1f} | {totals['jaxcert'][1]:.1f}"
    as_entry = lambda side: {"wall_ms": totals[side][0], "cpu_ms": totals[side][1]}
    lines.append(f"| sum of the stages above | {jax_sum} | {ref_sum} | {sum_ratio} |"
                 + base_cells(as_entry("baseline") if base else None, as_entry("jaxcert")))  # fmt: skip
    rest_entry = lambda side: {"wall_ms": rest[side][0], "cpu_ms": rest[side][1]} if side in rest else None
    lines.append(f"| rest (step − stages) | {fmt_pair('jaxcert', 0)} | {fmt_pair('jaxcert', 1)} | "
                 f"{fmt_pair('reference', 0)} | {fmt_pair('reference', 1)} | – |"
                 + base_cells(rest_entry("baseline"), rest_entry("jaxcert")))  # fmt: skip
    step_ratio = f"{ref['step']['cpu_ms'] / jx['step']['cpu_ms']:.2f}" if ref else "–"
    ref_step = ref["step"] if ref else None
    lines.append(f"| **whole step** | {jx['step']['wall_ms']:.1f} | {jx['step']['cpu_ms']:.1f} | "
                 f"{cell(ref_step, 'wall_ms')} | {cell(ref_step, 'cpu_ms')} | {step_ratio} |"
                 + base_cells(base["step"] if base else None, jx["step"]))  # fmt: skip
    lines.append("")
    lines.append(f"Page faults per step: jaxcert {jx['faults']}" + (f", reference {ref['faults']}" if ref else "")
                 + (f", baseline {base['faults']}" if base else "")
                 + f". jaxcert's step: {jx['step']['gflop']:.1f} GFLOP, {jx['step']['gbytes']:.2f} GB accessed "
                 "(XLA's cost analysis).")  # fmt: skip
    if "trace" in jx:
        lines += ["", "jaxcert's step by HLO thunk (trace, thunk wall ms per step; the two threads overlap):", "",
                  "| stage | ms |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {v:.1f} |" for k, v in jx["trace"].items()]
        lines.append(f"| total | {sum(jx['trace'].values()):.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, help="virtual environment with auto_LiRPA (the PyTorch side)")
    p.add_argument("--baseline", type=Path, help="another jaxcert checkout to time side by side (before/after)")
    p.add_argument("--arch", default="cnn7", choices=("cnn7", "cnn5", "cnn3"), help="the architecture (default cnn7)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (best counts)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per stage and round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trace", action="store_true", help="add jaxcert's per-HLO stage attribution (a profiler trace)")
    p.add_argument("--quick", action="store_true", help="tiny net, batch 4, one round, jaxcert only unless --reference")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "profile_cnn7_step.json")
    p.add_argument("--side", choices=("jaxcert", "torch"), help=argparse.SUPPRESS)
    p.add_argument("plan", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.batch, args.rounds, args.repeats, args.threads) < 1:
        p.error("--batch, --rounds, --repeats and --threads must be >= 1")
    if args.reference and not (args.reference / "bin" / "python").is_file():
        p.error(f"--reference {args.reference}: no bin/python there")
    if args.baseline and not (args.baseline / "experiments" / "profile_cnn7_step.py").is_file():
        p.error(f"--baseline {args.baseline}: no experiments/profile_cnn7_step.py there (a jaxcert checkout?)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.side:  # a child: pinned before its runtime starts threads
        pin_to_side_cpus()
        sys.path.insert(0, str(HERE))
        plan = json.loads(Path(args.plan[0]).read_text())
        result = jax_side(plan) if args.side == "jaxcert" else torch_side(plan)
        Path(args.plan[1]).write_text(json.dumps(result))
        return result
    sys.path.insert(0, str(HERE))
    from bench_reference import write_case

    arch = "tiny" if args.quick else args.arch
    batch, rounds = (4, 1) if args.quick else (args.batch, args.rounds)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        case = str(write_case(Path(tmp) / "case.npz", arch, batch))
        plan = {"arch": arch, "batch": batch, "repeats": args.repeats, "threads": args.threads, "case": case,
                "layers": layer_plan(arch)}  # fmt: skip
        script = str(Path(__file__).resolve())
        sides = {"jaxcert": ([sys.executable, script, "--side", "jaxcert"], {}, REPO)}
        if args.baseline:
            base_script = str(args.baseline.resolve() / "experiments" / "profile_cnn7_step.py")
            sides = {"baseline": ([sys.executable, base_script, "--side", "jaxcert"], {}, args.baseline.resolve()),
                     **sides}  # fmt: skip
        if args.reference:
            sides["reference"] = ([str(args.reference / "bin" / "python"), script, "--side", "torch"],
                                  {"OMP_WAIT_POLICY": "PASSIVE"}, REPO)  # fmt: skip
        outputs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        for number in range(rounds):
            for name, (command, env, root) in sides.items():
                print(f"round {number + 1}/{rounds}: {name} ...", file=sys.stderr, flush=True)
                trace = args.trace and name == "jaxcert" and number == rounds - 1
                env = side_env(first_cpus(plan["threads"]), plan["threads"], env, root=root)
                outputs[name].append(run_plan_side(command, {**plan, "trace": trace}, env, args.timeout))
    merged = {name: best_of(results) for name, results in outputs.items()}
    if args.trace:
        merged["jaxcert"]["trace"] = outputs["jaxcert"][-1]["trace"]
    result = {"arch": arch, "baseline": str(args.baseline) if args.baseline else None, "batch": batch,
              "rounds": rounds, "repeats": args.repeats, "threads": args.threads, "load_before": load_before,
              "load_after": os.getloadavg()[0], "sides": merged}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
