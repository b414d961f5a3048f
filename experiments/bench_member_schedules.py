"""Schedules of the GLS member axis side by side: throughput and XLA's memory estimate per schedule.

For a population of ``--members`` parameter samples ``θ + σ z_i`` (CNN3, batch ``--batch``) it times

* ``forward``: the certified objective of every member (a PGPE generation's work, no ask/tell), and
* ``rgs``:     the value and gradient of the objective for ``--samples`` members (an RGS step's work),

under each schedule of :func:`jaxcert.train.members.map_members`: ``vmap`` (one vmap of all members),
``map<k>`` (``lax.map`` over chunks of ``k``; ``map1`` is the sequential loop), ``unroll`` (a Python loop
over the members inside one program: the members as independent copies, no loop; this benchmark only)
and ``auto`` (the default rule of :mod:`jaxcert.train.member_schedule` for this backend). Every
schedule of one (work, relaxation) is compiled first, then timed in ``--rounds`` alternating rounds
(a warm-up call, then the fastest of ``--repeats`` calls per round; the figure is the best round), so
the schedules share the machine's load. Throughput is member-examples/s = members · batch / seconds;
memory is XLA's estimate (``compiled.memory_analysis()``: arguments + outputs + temporaries). A program
whose estimate exceeds ``--memory-gb`` is recorded as skipped, not run. The measurements behind the
default rule:

    python experiments/bench_member_schedules.py            # CNN3, batch 32, 32 members, k = 4 (minutes)
    python experiments/bench_member_schedules.py --works rgs --batch 128 --schedules vmap map1 map2 unroll auto
    python experiments/bench_member_schedules.py --quick    # seconds: tiny net
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.nets import get_architecture, init_params, split_trainable
from jaxcert.provenance import provenance
from jaxcert.train import certified_objective, gaussian_noise, perturb, recipe_schedule
from jaxcert.train.members import map_members

GiB = 2**30
FULL = {
    "arch": "cnn3", "in_shape": (28, 28, 1), "batch": 32, "members": 32, "samples": 4,
    "relaxations": ("ibp", "crown-ibp", "deeppoly"), "schedules": ("vmap", "map1", "map2", "map4", "map8", "auto"),
    "repeats": 2, "rounds": 2, "memory_gb": 6.0,
}  # fmt: skip
QUICK = {
    "arch": "mlp_small", "in_shape": (4, 4, 1), "batch": 4, "members": 4, "samples": 2, "relaxations": ("ibp",),
    "schedules": ("vmap", "map2", "unroll", "auto"), "repeats": 1, "rounds": 1, "memory_gb": 6.0,
}  # fmt: skip


def schedule_arguments(name: str) -> dict[str, Any]:
    """``"vmap"`` / ``"map<k>"`` / ``"unroll"`` / ``"auto"`` -> the ``chunk`` of ``map_members`` (``-1``: one
    vmap, ``-2``: unrolled)."""
    if name == "vmap":
        return {"chunk": -1}
    if name == "unroll":
        return {"chunk": -2}
    if name == "auto":
        return {"chunk": 0}
    if name.startswith("map") and name[3:].isdigit() and int(name[3:]) > 0:
        return {"chunk": int(name[3:])}
    raise ValueError(f"unknown schedule {name!r}: expected vmap, unroll, auto or map<k> (k >= 1)")


def unrolled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``(members, *shared) ->`` the stacked ``fn(member_i, *shared)``, one copy of ``fn`` per member in the
    program (no vmap, no loop)."""

    def mapped(members: Any, *shared: Any) -> Any:
        size = jax.tree_util.tree_leaves(members)[0].shape[0]
        outs = [fn(jax.tree_util.tree_map(lambda a, i=i: a[i], members), *shared) for i in range(size)]
        return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

    return mapped


def members_program(objective: Any, name: str, gradient: bool) -> Callable[..., Any]:
    """``(members, frozen, x, y) ->`` every member's objective (with its gradient when ``gradient``)."""
    fn = jax.value_and_grad(objective, has_aux=True) if gradient else objective
    options = schedule_arguments(name)
    if options["chunk"] == -1:  # one vmap, whatever the rule would choose
        mapped = lambda members, *shared: jax.vmap(lambda m: fn(m, *shared))(members)
    elif options["chunk"] == -2:
        mapped = unrolled(fn)
    else:
        mapped = map_members(fn, options["chunk"])
    return lambda members, frozen, x, y: mapped(members, frozen, x, y, 0)


def estimated_bytes(compiled: Any) -> int | None:
    """XLA's estimate of one call's memory (arguments + outputs + temporaries), ``None`` where it gives none."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def fastest_seconds(call: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up call."""
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return min(times)


def measure(s: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (work, relaxation, schedule)."""
    arch = get_architecture(s["arch"], 10, "fashion_mnist")
    params = init_params(arch, tuple(s["in_shape"]), seed=0)
    trainable, frozen = split_trainable(params)
    kx, ky, kz = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(kx, (s["batch"], *s["in_shape"]))
    y = jax.random.randint(ky, (s["batch"],), 0, 10)
    rows = []
    for work, size in (("forward", s["members"]), ("rgs", s["samples"])):
        if work not in s["works"]:
            continue
        members = perturb(trainable, gaussian_noise(kz, trainable, size), 0.01)
        for relaxation in s["relaxations"]:
            objective = certified_objective(arch, relaxation, recipe_schedule(0.1, kappa_final=0.0))
            group, calls = [], []
            for name in s["schedules"]:
                options = schedule_arguments(name)
                row: dict[str, Any] = {"work": work, "relaxation": relaxation, "members": size, "schedule": name}
                rows.append(row)
                if options["chunk"] > size or (options["chunk"] > 0 and size % options["chunk"]):
                    row["skipped"] = f"chunk {options['chunk']} does not divide {size} members"
                    continue
                start = time.perf_counter()
                compiled = jax.jit(members_program(objective, name, work == "rgs")).lower(members, frozen, x, y)
                compiled = compiled.compile()
                row["compile_s"] = time.perf_counter() - start
                need = estimated_bytes(compiled)
                row["memory_gib"] = None if need is None else need / GiB
                if need is not None and need > s["memory_gb"] * GiB:
                    row["skipped"] = f"estimated {need / GiB:.1f} GiB > {s['memory_gb']} GiB"
                    print(markdown_row(row), flush=True)
                    continue
                group.append(row)
                calls.append(lambda c=compiled: c(members, frozen, x, y))
            for _ in range(s["rounds"]):  # alternating: every schedule once per round
                for row, call in zip(group, calls, strict=True):
                    row.setdefault("round_seconds", []).append(fastest_seconds(call, s["repeats"]))
            for row in group:
                row["seconds"] = min(row["round_seconds"])
                row["throughput"] = size * s["batch"] / row["seconds"]
                print(markdown_row(row), flush=True)
    return rows


def markdown_row(r: dict[str, Any]) -> str:
    fmt = lambda key, spec: "–" if r.get(key) is None else format(r[key], spec)
    note = f"skipped: {r['skipped']}" if "skipped" in r else ""
    cells = [r["work"], r["relaxation"], str(r["members"]), r["schedule"], fmt("throughput", ".0f"),
             fmt("memory_gib", ".2f"), fmt("compile_s", ".1f"), note]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    head = (
        f"{s['arch'].upper()}, batch {s['batch']}, backend {result['backend']}, load average "
        f"{result['load_average']:.1f} at the start; member-examples/s (best of {s['rounds']} alternating rounds "
        f"of the fastest of {s['repeats']} calls)."
    )
    lines = [head, "", "| work | relaxation | members | schedule | member-ex/s | est. GiB | compile s | note |",
             "|---|---|---|---|---|---|---|---|", *(markdown_row(r) for r in result["rows"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny setting (seconds), used by the tests")
    p.add_argument("--relaxations", nargs="+", help="relaxations (default: ibp crown-ibp deeppoly)")
    p.add_argument("--schedules", nargs="+", help="vmap, auto, map<k> (default: a sweep)")
    p.add_argument("--memory-gb", type=float, help="skip programs XLA estimates above this (default 6)")
    p.add_argument("--works", nargs="+", choices=("forward", "rgs"), help="default: both")
    p.add_argument("--repeats", type=int, help="timed calls per schedule and round (default 2)")
    p.add_argument("--rounds", type=int, help="alternating rounds over the schedules (default 2)")
    p.add_argument("--batch", type=int, help="examples per member (default 32)")
    p.add_argument("--members", type=int, help="forward: population size (default 32)")
    p.add_argument("--samples", type=int, help="rgs: samples k (default 4)")
    p.add_argument("--out", type=Path, default=Path("experiments/results/bench_member_schedules.json"))
    args = p.parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    s["works"] = ("forward", "rgs")
    for key in ("relaxations", "schedules", "memory_gb", "works", "repeats", "rounds", "batch", "members", "samples"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if any(s[key] < 1 for key in ("repeats", "rounds", "batch", "members", "samples")):
        p.error("--repeats, --rounds, --batch, --members and --samples must be >= 1")
    for name in s["schedules"]:
        try:
            schedule_arguments(name)
        except ValueError as err:
            p.error(str(err))
    result = {"settings": s, "backend": jax.default_backend(), "load_average": os.getloadavg()[0]}
    start = time.time()
    result["rows"] = measure(s)
    result["seconds"] = time.time() - start
    result["provenance"] = provenance()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=list))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    run()
