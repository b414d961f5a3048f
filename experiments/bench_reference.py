"""jaxcert side by side with the PyTorch reference bound library (auto_LiRPA), row by row.

Each library runs in its own process, pinned to the same (at most) 2 CPUs with 2 threads (XLA's thread
pool in one process slows torch by up to 30×), back to back on the same case: the same weights (this
script writes them with jaxcert's layout into a case file; ``experiments/reference_lirpa.py``, run with
the reference's Python, converts them and checks its logits against jaxcert's to ``--tolerance``
before timing), the same inputs and labels, ε-ball clipped to [0, 1], margin lower bounds only. Rounds
alternate jaxcert, reference, jaxcert, reference, …; each row's figure is the best of its rounds
(within a round: a warm-up call, then the fastest of ``--repeats`` calls). Per row it prints jaxcert
ex/s, reference ex/s, their ratio, the peak resident memory of each process during the row
(:mod:`experiments.peak_memory`) and the load average; JSON to ``--out``.

Rows (:data:`ROWS`; Fashion-MNIST shapes, ``cnn3`` / ``cnn7`` at random-init weights on uniform inputs, or
a trained run's weights on its test images with ``--run DIR`` for the rows of its architecture): bounds and
training steps (bounds + gradient of the mean certified cross-entropy in the weights) of IBP and
CROWN-IBP, CNN3's full CROWN bounds and training step, and GLS on CNN3 at batch 32: a population's forward
certified loss (PGPE's fitness; jaxcert: one jitted call of :func:`jaxcert.train.members.map_members` in PGPE's
default schedule; the reference: a Python loop over members), and RGS value-and-gradient with k = 4. Throughput
counts member-examples for the GLS rows.

The reference is never a dependency: without ``--reference VENV`` only the jaxcert side runs (its
column alone, ratio "–").

    bash ../shared/reference/setup_reference.sh /work/refvenv          # once
    python experiments/bench_reference.py --reference /work/refvenv    # every row (≈ 10 minutes, 2 cores)
    python experiments/bench_reference.py --reference /work/refvenv --rows cnn3-ibp-bounds,gls-ibp
    python experiments/bench_reference.py --quick                      # seconds: jaxcert side, tiny net

``--baseline DIR`` times a second jaxcert checkout too (e.g. ``git worktree add DIR <old commit>``), its own
``experiments/bench_reference.py --side jaxcert`` with ``PYTHONPATH=DIR``, in the same alternating rounds
(baseline, jaxcert, reference): a column of its ex/s and the ratio jaxcert / baseline, before/after
measured side by side on a loaded machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sides import first_cpus, pin_to_side_cpus, side_env

HERE = Path(__file__).resolve().parent
REFERENCE_SCRIPT = HERE / "reference_lirpa.py"


@dataclasses.dataclass(frozen=True)
class Row:
    """One comparison: ``work`` in bounds / train / population / rgs on ``arch`` at ``batch``."""

    name: str
    arch: str
    work: str
    relaxation: str
    batch: int
    members: int = 1


ROWS = (
    Row("cnn3-ibp-bounds", "cnn3", "bounds", "ibp", 128),
    Row("cnn3-ibp-train", "cnn3", "train", "ibp", 128),
    Row("cnn3-crown-ibp-bounds", "cnn3", "bounds", "crown-ibp", 128),
    Row("cnn3-crown-ibp-train", "cnn3", "train", "crown-ibp", 128),
    Row("cnn3-crown-bounds", "cnn3", "bounds", "crown", 128),
    Row("cnn3-crown-train", "cnn3", "train", "crown", 128),
    Row("cnn7-ibp-bounds", "cnn7", "bounds", "ibp", 128),
    Row("cnn7-ibp-train", "cnn7", "train", "ibp", 128),
    Row("cnn7-crown-ibp-bounds", "cnn7", "bounds", "crown-ibp", 128),
    Row("cnn7-crown-ibp-train", "cnn7", "train", "crown-ibp", 16),
    Row("gls-ibp", "cnn3", "population", "ibp", 32, 32),
    Row("gls-crown-ibp", "cnn3", "population", "crown-ibp", 32, 32),
    Row("gls-deeppoly", "cnn3", "population", "deeppoly", 32, 8),
    Row("rgs-crown-ibp", "cnn3", "rgs", "crown-ibp", 32, 4),
    Row("rgs-deeppoly", "cnn3", "rgs", "deeppoly", 32, 4),
)
QUICK_ROWS = (
    Row("tiny-ibp-bounds", "tiny", "bounds", "ibp", 4),
    Row("tiny-crown-train", "tiny", "train", "crown", 4),
    Row("tiny-gls-crown-ibp", "tiny", "population", "crown-ibp", 4, 4),
    Row("tiny-rgs-ibp", "tiny", "rgs", "ibp", 4, 2),
)
SIGMA = 0.01  # GLS perturbation scale of the weights
EPS = 0.1


def architecture(name: str) -> tuple[Any, tuple[int, int, int]]:
    """``(arch, input shape)`` of a benchmark architecture (Fashion-MNIST shapes)."""
    from jaxcert.nets import Conv, Dense, Flatten, Normalize, ReLU, get_architecture

    if name == "tiny":
        return (Normalize((0.5,), (0.25,)), Conv(4, 3, 2, 1), ReLU(), Flatten(), Dense(8), ReLU(), Dense(10)), (8, 8, 1)
    return get_architecture(name, 10, "fashion_mnist"), (28, 28, 1)


def arch_spec(arch: Any, in_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """The layer list the reference script rebuilds (kinds Normalize, Conv, ReLU, Flatten, Dense only)."""
    spec, shape = [], tuple(in_shape)
    for layer in arch:
        kind = type(layer).__name__
        entry: dict[str, Any] = {"kind": kind}
        if kind == "Normalize":
            entry.update(mean=list(layer.mean), std=list(layer.std))
        elif kind == "Conv":
            entry.update(features=layer.features, kernel=layer.kernel, stride=layer.stride, padding=layer.padding)
        elif kind == "Dense":
            entry.update(features=layer.features)
        elif kind == "Flatten":
            entry.update(in_shape=list(shape))
        elif kind != "ReLU":
            raise ValueError(f"layer kind {kind!r} has no PyTorch twin in the reference benchmark")
        spec.append(entry)
        shape = layer.out_shape(shape)
    return spec


def write_case(path: Path, arch_name: str, batch: int, seed: int = 0, run: Path | None = None) -> Path:
    """Weights (jaxcert layout), inputs, labels, ε and jaxcert's logits of one architecture, as ``.npz``:
    random-init weights on uniform inputs, or, when ``run`` is a trained run of this architecture, its
    weights on its first ``batch`` test images and labels (where most ReLUs are stable, as in use)."""
    import jax
    import numpy as np

    from jaxcert.nets import forward, init_params

    arch, in_shape = architecture(arch_name)
    if run is not None:
        from jaxcert.runs import load_run
        from jaxcert.train.run_data import load_data

        arch, params, config = load_run(run)
        _, test = load_data(config)
        x, y = jax.numpy.asarray(test.x[:batch]), jax.numpy.asarray(test.y[:batch])
    else:
        params = init_params(arch, in_shape, seed=seed)
        kx, ky = jax.random.split(jax.random.key(seed))
        x = jax.random.uniform(kx, (batch, *in_shape))
        y = jax.random.randint(ky, (batch,), 0, 10)
    weights = {f"w:{i}.{k}": np.asarray(v) for i, p in enumerate(params) for k, v in p.items()}
    logits = np.asarray(jax.jit(lambda p, x: forward(arch, p, x))(params, x))
    spec = json.dumps(arch_spec(arch, in_shape))
    np.savez(path, spec=spec, x=np.asarray(x), y=np.asarray(y), eps=EPS, logits=logits, **weights)
    return path


def jaxcert_work(row: Row, case: dict[str, Any]) -> Callable[[], Any]:
    """The jitted, compiled call of ``row``'s work on the case (weights, x, y from the case file)."""
    import jax
    import jax.numpy as jnp

    from jaxcert.bounds import certified_cross_entropy, margin_lower_bounds
    from jaxcert.train import gaussian_noise, perturb
    from jaxcert.train.members import map_members

    arch, _ = architecture(row.arch)
    params, x, y, eps = case["params"], case["x"][: row.batch], case["y"][: row.batch], case["eps"]

    def loss(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean(certified_cross_entropy(margin_lower_bounds(arch, p, x, y, eps, relaxation=row.relaxation)))

    if row.work == "bounds":
        fn = lambda p, x, y, key: margin_lower_bounds(arch, p, x, y, eps, relaxation=row.relaxation)
    elif row.work == "train":
        fn = lambda p, x, y, key: jax.value_and_grad(loss)(p, x, y)
    elif row.work == "population":  # one program over the members, in map_members' default schedule
        fn = lambda p, x, y, key: map_members(loss)(perturb(p, gaussian_noise(key, p, row.members), SIGMA), x, y)
    elif row.work == "rgs":

        def fn(p: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> Any:
            members = perturb(p, gaussian_noise(key, p, row.members), SIGMA)
            values, grads = map_members(jax.value_and_grad(loss))(members, x, y)
            return values.mean(), jax.tree_util.tree_map(lambda g: g.mean(0), grads)
    else:
        raise ValueError(f"unknown work {row.work!r}")
    key = jax.random.key(1)
    compiled = jax.jit(fn).lower(params, x, y, key).compile(compiler_options=cpu_options(row))
    return lambda: compiled(params, x, y, key)


def cpu_options(row: Row) -> dict[str, str]:
    """The compiler options of ``row``'s program on XLA:CPU by the library's rule (:mod:`jaxcert.cpu_convolutions`,
    as ``python -m jaxcert.train`` applies it); none on other backends."""
    import jax

    from jaxcert.cpu_convolutions import compiler_options

    arch, in_shape = architecture(row.arch)
    return compiler_options(arch, in_shape, row.batch) if jax.default_backend() == "cpu" else {}


def time_call(call: Callable[[], Any], repeats: int, max_seconds: float) -> dict[str, float]:
    """:func:`bench_bounds.time_calls` with short calls timed for at least
    :data:`timed_calls.MIN_TIMED_SECONDS` (as the reference side); the fastest counts."""
    from bench_bounds import time_calls
    from timed_calls import MIN_TIMED_SECONDS

    times, warmup = time_calls(call, repeats, max_seconds, min_seconds=MIN_TIMED_SECONDS)
    return {"seconds": min(times), "warmup_s": warmup}


def jaxcert_side(plan: dict[str, Any]) -> dict[str, Any]:
    """Time the plan's rows with jaxcert in this process (the ``--side jaxcert`` child)."""
    import jax
    import numpy as np
    from peak_memory import peak_gib, reset_peak

    results = []
    for entry in plan["rows"]:
        row = Row(**{f.name: entry[f.name] for f in dataclasses.fields(Row)})
        out: dict[str, Any] = {"name": row.name}
        try:
            data = np.load(entry["case"])
            n_layers = len(json.loads(str(data["spec"])))
            params = [
                {k.split(".", 1)[1]: jax.numpy.asarray(data[k]) for k in data.files if k.startswith(f"w:{i}.")}
                for i in range(n_layers)
            ]
            case = {"params": params, "x": jax.numpy.asarray(data["x"]), "y": jax.numpy.asarray(data["y"]),
                    "eps": float(data["eps"])}  # fmt: skip
            reset_peak()
            start = time.perf_counter()
            call = jaxcert_work(row, case)
            out["compile_s"] = time.perf_counter() - start
            out["convolutions"] = "eigen" if cpu_options(row) else "xla default"
            out.update(time_call(call, entry["repeats"], entry["max_seconds"]))
            out["throughput"] = row.batch * row.members / out["seconds"]
            out["peak_gib"] = peak_gib()
            out["load"] = os.getloadavg()[0]
        except Exception as err:  # a failing row is reported, the others still run
            out["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        results.append(out)
        print(json.dumps(out), flush=True)
    return {"jax": jax.__version__, "backend": jax.default_backend(), "rows": results}


def run_child(
    command: list[str], threads: int, timeout: float, root: Path = HERE.parent
) -> tuple[dict[str, Any] | None, str]:
    """Run one side's process pinned to the first ``threads`` CPUs (``root``: the jaxcert checkout it imports);
    ``(its JSON, "")`` or ``(None, why)``."""
    with tempfile.TemporaryDirectory() as tmp:
        out, env = Path(tmp) / "out.json", side_env(first_cpus(threads), threads, root=root)
        try:
            done = subprocess.run([*command, str(out)], env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s"
        if done.returncode or not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return None, f"exit {done.returncode}: {tail[0][:300]}"
        return json.loads(out.read_text()), ""


def best(rounds: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The fastest successful result of row ``name`` over the rounds (``None`` if none), with ``rounds``."""
    found = [r for side in rounds for r in side["rows"] if r["name"] == name and "throughput" in r]
    if not found:
        errors = [r["error"] for side in rounds for r in side["rows"] if r["name"] == name and "error" in r]
        return {"error": errors[0]} if errors else None
    top = max(found, key=lambda r: r["throughput"])
    return {**top, "rounds": len(found), "all_throughputs": [r["throughput"] for r in found]}


def markdown(result: dict[str, Any]) -> str:
    """The side-by-side table."""
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    baseline = result.get("baseline")
    lines = [
        f"jaxcert vs reference ({result['reference'] or 'no reference: jaxcert side only'}); best of "
        f"{result['rounds']} alternating rounds, {result['threads']} threads each; load average "
        f"{result['load_before']:.2f} before, {result['load_after']:.2f} after."
        + (
            f" Weights of the {result['run']} run's architecture: that run's, on its test images."
            if result.get("run")
            else " Random-init weights on uniform inputs."
        )
        + (f" Baseline: the jaxcert checkout {baseline}." if baseline else ""),
        "",
        "| row | work (batch × members) | jaxcert ex/s | reference ex/s | ratio | jaxcert peak GiB "
        "| reference peak GiB | load | note |" + (" baseline ex/s | jaxcert / baseline |" if baseline else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if baseline else ""),
    ]
    for r in result["rows"]:
        j, ref = r.get("jaxcert") or {}, r.get("reference") or {}
        note = "; ".join(f"{side}: {d['error']}" for side, d in (("jaxcert", j), ("reference", ref)) if "error" in d)
        if j.get("convolutions") == "eigen":
            note = "; ".join(filter(None, [note, "jaxcert: Eigen convolutions"]))
        cells = [
            r["name"], f"{r['work']} {r['relaxation']} ({r['batch']}×{r['members']})",
            fmt(j.get("throughput"), ".1f"), fmt(ref.get("throughput"), ".1f"), fmt(r.get("ratio"), ".2f"),
            fmt(j.get("peak_gib"), ".2f"), fmt(ref.get("peak_gib"), ".2f"), fmt(r.get("load"), ".2f"), note,
        ]  # fmt: skip
        if baseline:
            cells += [fmt((r.get("baseline") or {}).get("throughput"), ".1f"), fmt(r.get("vs_baseline"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, help="virtual environment with auto_LiRPA (setup_reference.sh)")
    p.add_argument("--baseline", type=Path, help="another jaxcert checkout to time side by side (see the doc)")
    p.add_argument("--rows", help=f"comma-separated row names (default: all of {', '.join(r.name for r in ROWS)})")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (best counts; default 2)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per row and round (default 2)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="time budget of one row's timed calls")
    p.add_argument("--threads", type=int, default=2, help="CPUs / threads of each side (default 2)")
    p.add_argument("--tolerance", type=float, default=1e-6, help="max |Δ logits| of the converted weights")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one side's process may take")
    p.add_argument("--quick", action="store_true", help="tiny net, jaxcert side only unless --reference")
    p.add_argument(
        "--run",
        type=Path,
        help="a trained run: the rows of its architecture use its weights and test "
        "images instead of random-init weights on uniform inputs",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_reference.json", help="JSON output")
    p.add_argument("--side", choices=("jaxcert",), help=argparse.SUPPRESS)  # internal: the jaxcert child
    p.add_argument("plan", nargs="*", help=argparse.SUPPRESS)  # internal: PLAN.json OUT.json of a child
    args = p.parse_args(argv)
    catalogue = QUICK_ROWS if args.quick else ROWS
    names = args.rows.split(",") if args.rows else [r.name for r in catalogue]
    known = {r.name: r for r in (*ROWS, *QUICK_ROWS)}
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(known)}")
    args.selected = [known[n] for n in names]
    if args.rounds < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--rounds, --repeats and --threads must be >= 1")
    python = args.reference / "bin" / "python" if args.reference else None
    if python is not None and not python.is_file():
        p.error(f"--reference {args.reference}: no {python} (build it with setup_reference.sh)")
    args.reference_python = python
    if args.baseline is not None and not (args.baseline / "experiments" / "bench_reference.py").is_file():
        p.error(f"--baseline {args.baseline}: no experiments/bench_reference.py there (a jaxcert checkout?)")
    if args.run is not None:
        from jaxcert.runs import run_config

        try:
            args.run_arch = run_config(args.run).arch
        except (FileNotFoundError, ValueError) as error:
            p.error(f"--run {args.run}: {error}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.side == "jaxcert":  # the child process: pinned before JAX starts its thread pool
        pin_to_side_cpus()
        sys.path.insert(0, str(HERE))
        result = jaxcert_side(json.loads(Path(args.plan[0]).read_text()))
        Path(args.plan[1]).write_text(json.dumps(result, indent=1))
        return result
    from jaxcert.provenance import provenance

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        batches: dict[str, int] = {}
        for row in args.selected:
            batches[row.arch] = max(batches.get(row.arch, 0), row.batch)
        trained = lambda a: args.run if args.run is not None and args.run_arch == a else None
        cases = {a: str(write_case(Path(tmp) / f"{a}.npz", a, b, run=trained(a))) for a, b in batches.items()}
        plan = {
            "threads": args.threads, "tolerance": args.tolerance,
            "rows": [{**dataclasses.asdict(r), "case": cases[r.arch], "repeats": args.repeats,
                      "max_seconds": args.max_seconds, "sigma": SIGMA} for r in args.selected],
        }  # fmt: skip
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        child = lambda script: [sys.executable, str(script), "--side", "jaxcert", str(plan_path)]
        sides, roots = {"jaxcert": child(Path(__file__).resolve())}, {"jaxcert": HERE.parent}
        if args.baseline is not None:
            sides = {"baseline": child(args.baseline.resolve() / "experiments" / "bench_reference.py"), **sides}
            roots["baseline"] = args.baseline.resolve()
        if args.reference_python:
            sides["reference"] = [str(args.reference_python), str(REFERENCE_SCRIPT), str(plan_path)]
        rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        notes, loads = [], []
        for number in range(args.rounds):
            for side, command in sides.items():
                loads.append(os.getloadavg()[0])
                print(f"round {number + 1}/{args.rounds}: {side} ...", file=sys.stderr, flush=True)
                out, why = run_child(command, args.threads, args.timeout, roots.get(side, HERE.parent))
                if out is None:
                    notes.append(f"round {number + 1}, {side}: {why}")
                else:
                    rounds[side].append(out)
    rows = []
    for row in args.selected:
        entry: dict[str, Any] = dataclasses.asdict(row)
        for side in sides:
            entry[side] = best(rounds[side], row.name)
        j, ref = entry.get("jaxcert") or {}, entry.get("reference") or {}
        if "throughput" in j and "throughput" in ref:
            entry["ratio"] = j["throughput"] / ref["throughput"]
        base = entry.get("baseline") or {}
        if "throughput" in j and "throughput" in base:
            entry["vs_baseline"] = j["throughput"] / base["throughput"]
        row_loads = [d["load"] for d in (j, ref) if "load" in d]
        entry["load"] = max(row_loads) if row_loads else None
        rows.append(entry)
    result = {
        "run": str(args.run) if args.run else None,
        "reference": str(args.reference) if args.reference else None, "rounds": args.rounds, "threads": args.threads,
        "baseline": str(args.baseline) if args.baseline else None,
        "load_before": load_before, "load_after": os.getloadavg()[0], "loads": loads, "rows": rows, "notes": notes,
        "versions": {side: {k: v for k, v in r[0].items() if k != "rows"} for side, r in rounds.items() if r},
        "provenance": provenance(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    for note in notes:
        print(f"note: {note}")
    return result


if __name__ == "__main__":
    main()
