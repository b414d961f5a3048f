"""Benchmark of Gaussian Loss Smoothing on CNN3: one vmapped call versus a Python loop.

PGPE: seconds per generation (ask → certified loss of every member → tell) for several population
sizes, the whole generation one jitted step whose member axis is scheduled as ONE ``vmap`` over the
population, as ``lax.map`` over chunks of ``--chunk`` members, or in the default schedule (``member_chunk=0``:
the measured rule per backend, ``jaxcert.train.member_schedule``), against
a Python loop that evaluates the members one by one with a jitted single-member loss (ask and tell jitted
too). RGS: seconds per step with ``k`` perturbed gradients (all three schedules) against one plain
certified-training step.

Inputs are random images (timing does not depend on the data). Programs are compiled ahead of time
(compile seconds reported separately); times are medians over ``--repeats`` calls. The default batch
is 32 (not 128) so that the full CPU run stays within about ten minutes on two cores. A configuration
whose compiled program needs more memory than ``--memory-fraction`` of this machine's RAM is skipped
with a note, as is one whose call is estimated (from the loop, or k plain steps) to take longer than
``--max-call-s``, and a relaxation that is not registered. For large populations the loop is timed on
``--loop-members`` members and extrapolated linearly (marked in the table).

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
from jaxcert.provenance import provenance
from jaxcert.train import certified_objective, certified_trainer, pgpe_trainer, recipe_schedule, rgs_trainer
from jaxcert.train.member_schedule import describe as describe_member_schedule

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "bench_gls"

FULL = {
    "arch": "cnn3", "in_shape": (28, 28, 1), "batch": 32, "populations": (16, 64, 256),
    "relaxations": ("crown-ibp", "deeppoly"), "samples": (4, 16), "repeats": 2, "loop_members": 16,
    "chunk": 1, "max_call_s": 60.0,
}  # fmt: skip
QUICK = {
    "arch": "mlp_small", "in_shape": (4, 4, 1), "batch": 4, "populations": (4,), "relaxations": ("ibp",),
    "samples": (2,), "repeats": 1, "loop_members": 2,
    "chunk": 2, "max_call_s": 60.0,
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny setting (seconds), used by the tests")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"directory for {NAME}.json and {NAME}.md")
    p.add_argument("--relaxations", nargs="+", help="relaxations to time (default: crown-ibp deeppoly)")
    p.add_argument("--populations", nargs="+", type=int, help="PGPE population sizes (default: 16 64 256)")
    p.add_argument("--samples", nargs="+", type=int, help="RGS sample counts k (default: 4 16)")
    p.add_argument("--batch", type=int, help="data batch size (default: 32)")
    p.add_argument("--repeats", type=int, help="timed calls (default: 2)")
    p.add_argument("--loop-members", type=int, help="members the Python loop is timed on (default: 16)")
    p.add_argument("--chunk", type=int, help="members per lax.map step of the chunked schedule (default: 1)")
    p.add_argument("--max-call-s", type=float, help="skip a program estimated to take longer per call (default: 60)")
    p.add_argument("--memory-fraction", type=float, default=0.6, help="skip programs needing more of the RAM")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    s = dict(QUICK if args.quick else FULL)
    for key in (
        "relaxations",
        "populations",
        "samples",
        "batch",
        "repeats",
        "loop_members",
        "chunk",
        "max_call_s",
    ):
        value = getattr(args, key)
        if value is not None:
            s[key] = tuple(value) if isinstance(value, list) else value
    return s


def timed(fn: Callable[[], Any], repeats: int, *, warmup: bool = True) -> float:
    """Median seconds of ``repeats`` calls (after a first, compiling call when ``warmup``)."""
    if warmup:
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_program(jitted: Any, *args: Any) -> tuple[Any, float, int | None]:
    """Compile ``jitted`` for ``args`` ahead of the timed calls: ``(executable, seconds, bytes needed)``, the
    bytes (arguments, outputs, temporaries) as XLA reports them, or ``None`` if it does not."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    if stats is None:
        return compiled, seconds, None
    return compiled, seconds, int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def check_memory(jitted: Any, args: Sequence[Any], budget: float) -> tuple[float, str]:
    """``(compile seconds, "")``, or ``(seconds, why)`` when the program needs more than ``budget`` bytes."""
    _, seconds, why, _ = compile_checked(jitted, args, budget)
    return seconds, why


def compile_checked(jitted: Any, args: Sequence[Any], budget: float) -> tuple[Any, float, str, int | None]:
    """``(executable, compile seconds, "", bytes)``, or ``(None, seconds, why, bytes)`` when it needs more
    than ``budget`` bytes (XLA's estimate; ``None`` where XLA gives none)."""
    compiled, seconds, need = compile_program(jitted, *args)
    if need is not None and need > budget:
        return None, seconds, f"needs {need / 2**30:.3g} GiB > {budget / 2**30:.3g} GiB budget", need
    return compiled, seconds, "", need


def ram_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


#: The schedules of the member axis that are timed: one vmap, lax.map over chunks of ``chunk``, and the
#: default rule of the backend (``member_chunk=0``).
SCHEDULES = ("vmap", "chunked", "default")


def schedule_options(name: str, chunk: int, size: int) -> dict[str, Any]:
    """``chunk`` keyword argument of the GLS trainers for schedule ``name`` (``size``: the members)."""
    return {"vmap": {"chunk": size}, "chunked": {"chunk": chunk}, "default": {"chunk": 0}}[name]


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

    def time_step(self, row: dict[str, Any], name: str, trainer: Any, estimate_s: float) -> None:
        """Time ``trainer.step`` into ``row[name + "_s"]`` (compile seconds into ``name + "_compile_s"``), or
        record why it was skipped: too much memory, or an estimated call longer than ``max_call_s``."""
        if estimate_s > self.s["max_call_s"]:
            row[f"{name}_skipped"] = f"estimated {estimate_s:.0f} s per call > {self.s['max_call_s']:.0f} s limit"
            return
        state = trainer.init(self.params)
        compiled, row[f"{name}_compile_s"], why, need = compile_checked(
            trainer.step, (state, self.x, self.y, self.key), self.budget
        )
        row[f"{name}_gib"] = None if need is None else need / 2**30  # XLA's estimate of the peak memory
        if why:
            row[f"{name}_skipped"] = why
            return
        row[f"{name}_s"] = timed(lambda: compiled(state, self.x, self.y, self.key)[1]["loss"], self.s["repeats"])

    def pgpe_rows(self, relaxation: str) -> list[dict[str, Any]]:
        s, rows = self.s, []
        objective = certified_objective(self.arch, relaxation, self.schedule)
        single = jax.jit(objective)
        for pop in s["populations"]:
            row: dict[str, Any] = {"relaxation": relaxation, "population": pop, "chunk": s["chunk"]}
            row.update(self.loop_generation(single, pop, s["loop_members"], s["repeats"]))
            for name in SCHEDULES:
                options = schedule_options(name, s["chunk"], pop)
                trainer = pgpe_trainer(
                    self.arch, objective, self.params, optax.adam(1e-3), sigma=0.01, population=pop, **options
                )
                self.time_step(row, name, trainer, row["loop_s"])
                if f"{name}_s" in row:
                    row[f"{name}_speedup"] = row["loop_s"] / row[f"{name}_s"]
            rows.append(row)
            print(format_pgpe(row), flush=True)
        return rows

    def loop_generation(self, single: Any, pop: int, loop_members: int, repeats: int) -> dict[str, Any]:
        """A generation with the members evaluated one at a time (``m = min(pop, loop_members)`` of them
        timed, the rest extrapolated): ask + pop · (loop time / m) + tell. When one member alone makes the
        generation exceed ``max_call_s``, the estimate is extrapolated from that one member."""
        es = PGPE(pop, solution=self.trainable, optimizer=optax.adam(1e-3))
        es_params = es.default_params.replace(std_init=0.01, std_lr=0.0)
        es_state = es.init(jax.random.key(0), self.trainable, es_params)
        members, _ = es.ask(self.key, es_state, es_params)
        fitness = jnp.zeros(pop)
        m = min(pop, loop_members)
        ask = jax.jit(es.ask)
        tell = jax.jit(es.tell)

        def ask_tell():  # type: ignore[no-untyped-def]
            population, state = ask(self.key, es_state, es_params)
            return tell(self.key, population, fitness, state, es_params)[0].mean

        def loop():  # type: ignore[no-untyped-def]
            out = []
            for i in range(m):
                member = jax.tree_util.tree_map(lambda a, i=i: a[i], members)
                out.append(single(member, self.frozen, self.x, self.y, 0)[0])
            return jnp.stack(out)

        ask_tell_s = timed(ask_tell, repeats)
        first = jax.tree_util.tree_map(lambda a: a[0], members)
        one_s = timed(lambda: single(first, self.frozen, self.x, self.y, 0)[0], 1)
        if one_s * pop > self.s["max_call_s"]:  # a slow relaxation: extrapolate from one member, skip the loop
            return {"loop_s": ask_tell_s + one_s * pop, "loop_extrapolated": pop > 1}
        loop_s = timed(loop, repeats, warmup=False)
        return {"loop_s": ask_tell_s + loop_s * pop / m, "loop_extrapolated": m < pop}

    def rgs_rows(self, relaxation: str) -> list[dict[str, Any]]:
        s, rows = self.s, []
        optimizer = optax.adam(1e-3)
        plain = certified_trainer(self.arch, relaxation, optimizer, self.schedule)
        probe: dict[str, Any] = {}
        self.time_step(probe, "plain", plain, 0.0)
        if "plain_skipped" in probe:
            return [{"relaxation": relaxation, "samples": k, **probe} for k in s["samples"]]
        objective = certified_objective(self.arch, relaxation, self.schedule)
        for k in s["samples"]:
            row: dict[str, Any] = {"relaxation": relaxation, "samples": k, "chunk": s["chunk"], **probe}
            for name in SCHEDULES:
                options = schedule_options(name, s["chunk"], k)
                trainer = rgs_trainer(self.arch, objective, optimizer, sigma=0.01, samples=k, **options)
                self.time_step(row, name, trainer, k * probe["plain_s"])
                if f"{name}_s" in row:
                    row[f"{name}_ratio"] = row[f"{name}_s"] / row["plain_s"]
            rows.append(row)
            print(format_rgs(row), flush=True)
        return rows


def cell(r: dict[str, Any], key: str, fmt: str = "{:.3f}") -> str:
    """A table cell: ``r[key]`` formatted; for a missing time (``<schedule>_s``) why it was skipped, else "–"."""
    if key in r:
        return "–" if r[key] is None else fmt.format(r[key])
    name, _, kind = key.partition("_")
    return f"skipped: {r[name + '_skipped']}" if kind == "s" and f"{name}_skipped" in r else "–"


def format_pgpe(r: dict[str, Any]) -> str:
    if "loop_s" not in r:  # an old-style row that was skipped as a whole
        return f"| {r['relaxation']} | {r['population']} | skipped: {r.get('skipped', '')} | | | | | | | | | |"
    mark = " (extrapolated)" if r["loop_extrapolated"] else ""
    compile_s = " / ".join(cell(r, f"{n}_compile_s", "{:.1f}") for n in SCHEDULES)
    times = " | ".join(cell(r, f"{n}_s") for n in SCHEDULES)
    speedups = " | ".join(cell(r, f"{n}_speedup", "{:.2f}x") for n in SCHEDULES)
    memory = " / ".join(cell(r, f"{n}_gib", "{:.2f}") for n in SCHEDULES)
    return (
        f"| {r['relaxation']} | {r['population']} | {times} | {r['loop_s']:.3f}{mark} | {speedups} | {compile_s} "
        f"| {memory} |"
    )


def format_rgs(r: dict[str, Any]) -> str:
    head = f"| {r['relaxation']} | {r['samples']} "
    if "plain_s" not in r:
        return head + f"| skipped: plain step {r.get('plain_skipped', '')} | | | | | | | | | |"
    compile_s = " / ".join(cell(r, f"{n}_compile_s", "{:.1f}") for n in SCHEDULES)
    times = " | ".join(cell(r, f"{n}_s") for n in SCHEDULES)
    ratios = " | ".join(cell(r, f"{n}_ratio", "{:.2f}") for n in SCHEDULES)
    memory = " / ".join(cell(r, f"{n}_gib", "{:.2f}") for n in SCHEDULES)
    return head + f"| {times} | {r['plain_s']:.3f} | {ratios} | {compile_s} | {memory} |"


def markdown(result: dict[str, Any]) -> str:
    s, env = result["settings"], result["environment"]
    lines = [
        "# GLS benchmark: vmapped population / samples vs a Python loop",
        "",
        f"{s['arch'].upper()} on inputs {tuple(s['in_shape'])}, batch {s['batch']}, ε = 0.1; "
        f"device: {env['device']} ({env['cpu_count']} CPUs visible, load average {env['load_average']:.1f} "
        f"at the start); medians of {s['repeats']} timed calls of programs compiled ahead of time.",
        "",
        "## PGPE: seconds per generation",
        "",
        f"Schedules of the member axis inside the one jitted generation (`jaxcert.train.members`): one `vmap` "
        f"over the population; `lax.map` over chunks of {s['chunk']} members (`chunk={s['chunk']}`); the default "
        f"schedule of this backend (`chunk=0`: {describe_member_schedule(2**10, 0)}); all against a Python loop "
        f"over jitted members.",
        "",
        "| relaxation | population | one vmap (s) | chunked (s) | default (s) | Python loop (s) | vmap speed-up "
        "| chunked speed-up | default speed-up | compile vmap / chunked / default (s) "
        "| memory vmap / chunked / default (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(format_pgpe(r) for r in result["pgpe"]),
        "",
        "## RGS: seconds per step with k perturbed gradients vs a plain certified step (ideal ratio: k)",
        "",
        "| relaxation | k | RGS one vmap (s) | RGS chunked (s) | RGS default (s) | plain step (s) | vmap ratio "
        "| chunked ratio | default ratio | compile vmap / chunked / default (s) "
        "| memory vmap / chunked / default (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
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
        size = f"population {row['population']}" if "population" in row else f"k = {row['samples']}"
        for name in ("plain", *SCHEDULES):
            if f"{name}_skipped" in row:
                result["notes"].append(f"{row['relaxation']}, {size}, {name}: skipped ({row[f'{name}_skipped']})")
    if device.platform == "cpu":
        result["notes"].append(
            "XLA:CPU: a convolution vmapped over per-member kernels (activations and kernels both carry the "
            "member axis) lowers to a grouped convolution, which XLA:CPU runs several times slower per member "
            "than one ordinary convolution; chunks of few members via lax.map avoid it (the default rule on CPU, "
            "experiments/bench_member_schedules.py). Chunking bounds the memory by the chunk instead of the population."
        )
    result["total_seconds"] = time.time() - start
    result["provenance"] = provenance()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=2, default=float))
    (args.out / f"{NAME}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    run()
