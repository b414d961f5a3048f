"""Benchmark of Gaussian Loss Smoothing on CNN3: one vmapped call versus a Python loop.

PGPE: seconds per generation (ask → certified loss of every member → tell) for several population
sizes, with the population's losses computed by ONE vmapped, jitted call (the whole generation is one
jitted step), against a Python loop that evaluates the members one by one with a jitted single-member
loss (ask and tell jitted too). RGS: seconds per step with ``k`` perturbed gradients (one vmapped call)
against one plain certified-training step.

Inputs are random images (timing does not depend on the data). Times are medians over ``--repeats``
calls after a first, compiling call (reported separately). A configuration whose compiled program needs
more memory than ``--memory-fraction`` of this machine's RAM is skipped with a note, as is a relaxation
that is not registered. For large populations the loop is timed on ``--loop-members`` members and
extrapolated linearly (marked in the table).

    python experiments/bench_gls.py            # the real benchmark (CPU: several minutes)
    python experiments/bench_gls.py --quick    # seconds: smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import PGPE

from jaxcert.bounds import relaxation_names
from jaxcert.nets import get_architecture, init_params, split_trainable
from jaxcert.train import certified_objective, certified_trainer, pgpe_trainer, recipe_schedule, rgs_trainer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "bench_gls"

FULL = {
    "arch": "cnn3", "in_shape": (28, 28, 1), "batch": 128, "populations": (16, 64, 256),
    "relaxations": ("crown-ibp", "deeppoly"), "samples": (4, 16), "repeats": 3, "loop_members": 16,
}  # fmt: skip
QUICK = {
    "arch": "mlp_small", "in_shape": (4, 4, 1), "batch": 4, "populations": (4,), "relaxations": ("ibp",),
    "samples": (2,), "repeats": 1, "loop_members": 2,
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny setting (seconds), used by the tests")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"directory for {NAME}.json and {NAME}.md")
    p.add_argument("--relaxations", nargs="+", help="relaxations to time (default: crown-ibp deeppoly)")
    p.add_argument("--populations", nargs="+", type=int, help="PGPE population sizes (default: 16 64 256)")
    p.add_argument("--samples", nargs="+", type=int, help="RGS sample counts k (default: 4 16)")
    p.add_argument("--batch", type=int, help="data batch size (default: 128)")
    p.add_argument("--repeats", type=int, help="timed calls after the compiling one (default: 3)")
    p.add_argument("--loop-members", type=int, help="members the Python loop is timed on (default: 16)")
    p.add_argument("--memory-fraction", type=float, default=0.6, help="skip programs needing more of the RAM")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    s = dict(QUICK if args.quick else FULL)
    for key in ("relaxations", "populations", "samples", "batch", "repeats", "loop_members"):
        value = getattr(args, key)
        if value is not None:
            s[key] = tuple(value) if isinstance(value, list) else value
    return s


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after a first (warm-up) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_program(jitted: Any, *args: Any) -> tuple[float, int | None]:
    """Compile ``jitted`` for ``args`` ahead of the timed calls: ``(seconds, bytes needed)``, the bytes
    (arguments, outputs, temporaries) as XLA reports them, or ``None`` if it does not."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    if stats is None:
        return seconds, None
    return seconds, int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def check_memory(jitted: Any, args: Sequence[Any], budget: float) -> tuple[float, str]:
    """``(compile seconds, "")``, or ``(seconds, why)`` when the program needs more than ``budget`` bytes."""
    seconds, need = compile_program(jitted, *args)
    if need is not None and need > budget:
        return seconds, f"needs {need / 2**30:.3g} GiB > {budget / 2**30:.3g} GiB budget"
    return seconds, ""


def ram_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class Bench:
    """One architecture, one batch, one relaxation at a time."""

    def __init__(self, s: dict[str, Any], memory_fraction: float):
        self.s = s
        self.arch = get_architecture(s["arch"], 10, "fashion_mnist")
        self.params = jax.jit(init_params, static_argnums=(0, 1, 2))(self.arch, tuple(s["in_shape"]), 0)
        self.trainable, self.frozen = split_trainable(self.params)
        kx, ky = jax.random.split(jax.random.key(0))
        self.x = jax.random.uniform(kx, (s["batch"], *s["in_shape"]))
        self.y = jax.random.randint(ky, (s["batch"],), 0, 10)
        self.schedule = recipe_schedule(0.1, kappa_final=0.0)  # full ε, certified loss only
        self.budget = memory_fraction * ram_bytes()
        self.key = jax.random.key(1)

    def fits(self, jitted: Any, *args: Any) -> tuple[float, str]:
        return check_memory(jitted, args, self.budget)

    def pgpe_rows(self, relaxation: str) -> list[dict[str, Any]]:
        s, rows = self.s, []
        objective = certified_objective(self.arch, relaxation, self.schedule)
        single = jax.jit(objective)
        for pop in s["populations"]:
            row: dict[str, Any] = {"relaxation": relaxation, "population": pop}
            trainer = pgpe_trainer(self.arch, objective, self.params, optax.adam(1e-3), sigma=0.01, population=pop)
            state = trainer.init(self.params)
            row["vmap_compile_s"], why = self.fits(trainer.step, state, self.x, self.y, self.key)
            if why:
                rows.append({**row, "skipped": f"vmapped generation {why}"})
                continue
            row["vmap_s"] = timed(
                lambda t=trainer, st=state: t.step(st, self.x, self.y, self.key)[1]["loss"], s["repeats"]
            )
            row.update(self.loop_generation(single, pop, s["loop_members"], s["repeats"]))
            row["speedup"] = row["loop_s"] / row["vmap_s"]
            rows.append(row)
            print(format_pgpe(row), flush=True)
        return rows

    def loop_generation(self, single: Any, pop: int, loop_members: int, repeats: int) -> dict[str, Any]:
        """A generation with the members evaluated one at a time (``m = min(pop, loop_members)`` of them
        timed, the rest extrapolated): ask + pop · (loop time / m) + tell."""
        es = PGPE(pop, solution=self.trainable, optimizer=optax.adam(1e-3))
        es_params = es.default_params.replace(std_init=0.01, std_lr=0.0)
        es_state = es.init(jax.random.key(0), self.trainable, es_params)
        members, _ = es.ask(self.key, es_state, es_params)
        fitness = jnp.zeros(pop)
        m = min(pop, loop_members)

        def ask_tell():  # type: ignore[no-untyped-def]
            population, state = es.ask(self.key, es_state, es_params)
            return es.tell(self.key, population, fitness, state, es_params)[0].mean

        def loop():  # type: ignore[no-untyped-def]
            out = []
            for i in range(m):
                member = jax.tree_util.tree_map(lambda a, i=i: a[i], members)
                out.append(single(member, self.frozen, self.x, self.y, 0)[0])
            return jnp.stack(out)

        ask_tell_s = timed(ask_tell, repeats)
        loop_s = timed(loop, repeats)
        return {"loop_s": ask_tell_s + loop_s * pop / m, "loop_extrapolated": m < pop}

    def rgs_rows(self, relaxation: str) -> list[dict[str, Any]]:
        s, rows = self.s, []
        optimizer = optax.adam(1e-3)
        plain = certified_trainer(self.arch, relaxation, optimizer, self.schedule)
        state = plain.init(self.params)
        _, why = self.fits(plain.step, state, self.x, self.y, self.key)
        if why:
            return [{"relaxation": relaxation, "samples": k, "skipped": f"plain step {why}"} for k in s["samples"]]
        plain_s = timed(lambda: plain.step(state, self.x, self.y, self.key)[1]["loss"], s["repeats"])
        objective = certified_objective(self.arch, relaxation, self.schedule)
        for k in s["samples"]:
            row: dict[str, Any] = {"relaxation": relaxation, "samples": k, "plain_s": plain_s}
            trainer = rgs_trainer(self.arch, objective, optimizer, sigma=0.01, samples=k)
            rstate = trainer.init(self.params)
            row["rgs_compile_s"], why = self.fits(trainer.step, rstate, self.x, self.y, self.key)
            if why:
                rows.append({**row, "skipped": f"RGS step {why}"})
                continue
            row["rgs_s"] = timed(
                lambda t=trainer, st=rstate: t.step(st, self.x, self.y, self.key)[1]["loss"], s["repeats"]
            )
            row["ratio"] = row["rgs_s"] / plain_s
            rows.append(row)
            print(format_rgs(row), flush=True)
        return rows


def format_pgpe(r: dict[str, Any]) -> str:
    head = f"| {r['relaxation']} | {r['population']} "
    if "skipped" in r:
        return head + f"| skipped: {r['skipped']} | | | |"
    mark = " (extrapolated)" if r["loop_extrapolated"] else ""
    return head + f"| {r['vmap_s']:.3f} | {r['loop_s']:.3f}{mark} | {r['speedup']:.2f}x | {r['vmap_compile_s']:.1f} |"


def format_rgs(r: dict[str, Any]) -> str:
    head = f"| {r['relaxation']} | {r['samples']} "
    if "skipped" in r:
        return head + f"| skipped: {r['skipped']} | | | |"
    return head + f"| {r['rgs_s']:.3f} | {r['plain_s']:.3f} | {r['ratio']:.2f} | {r['rgs_compile_s']:.1f} |"


def markdown(result: dict[str, Any]) -> str:
    s, env = result["settings"], result["environment"]
    lines = [
        "# GLS benchmark: vmapped population / samples vs a Python loop",
        "",
        f"{s['arch'].upper()} on inputs {tuple(s['in_shape'])}, batch {s['batch']}, ε = 0.1; "
        f"device: {env['device']} ({env['cpu_count']} CPUs visible, load average {env['load_average']:.1f} "
        f"at the start); medians of {s['repeats']} timed calls after a compiling call.",
        "",
        "## PGPE: seconds per generation",
        "",
        "| relaxation | population | vmapped step (s) | Python loop (s) | speed-up | compile (s) |",
        "|---|---|---|---|---|---|",
        *(format_pgpe(r) for r in result["pgpe"]),
        "",
        "## RGS: seconds per step with k perturbed gradients (one vmapped call) vs a plain certified step",
        "",
        "| relaxation | k | RGS step (s) | plain step (s) | ratio | compile (s) |",
        "|---|---|---|---|---|---|",
        *(format_rgs(r) for r in result["rgs"]),
    ]
    if result["notes"]:
        lines += ["", "## Notes", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    s = settings(args)
    device = jax.devices()[0]
    result: dict[str, Any] = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "environment": {
            "device": f"{device.platform}: {getattr(device, 'device_kind', '')}".strip(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "jax": jax.__version__,
            "machine": platform.machine(),
        },
        "pgpe": [],
        "rgs": [],
        "notes": [],
    }
    bench = Bench(s, args.memory_fraction)
    known = relaxation_names()
    start = time.time()
    for relaxation in s["relaxations"]:
        if relaxation not in known:
            result["notes"].append(f"{relaxation}: not registered, skipped")
            continue
        result["pgpe"] += bench.pgpe_rows(relaxation)
        result["rgs"] += bench.rgs_rows(relaxation)
    for row in result["pgpe"] + result["rgs"]:
        if "skipped" in row:
            size = f"population {row['population']}" if "population" in row else f"k = {row['samples']}"
            result["notes"].append(f"{row['relaxation']}, {size}: skipped ({row['skipped']})")
    result["total_seconds"] = time.time() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=2, default=float))
    (args.out / f"{NAME}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    run()
