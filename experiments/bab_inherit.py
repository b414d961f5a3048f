"""Children that inherit their parent's bounds against children bounded from scratch, on a small saved run.

Branch and bound (:mod:`jaxcert.bab`) on some of the first ``--limit`` test examples (``--select
cascade``: those the default cascade of :func:`jaxcert.certify.certify_dataset` leaves open; ``bounds``:
the correctly classified ones whose alpha-CROWN margin bound is ≤ 0, attacks not run, so the examples
only branching can verify are kept; at most ``--max-examples``, the first ones; ``--random``: a random
MLP's own points instead of a run, :func:`random_case`), twice with
the same settings: ``BabOptions(inherit=True)`` (each child's bounds intersected with its parent's) and
``inherit=False`` (each child re-bounded from the box and its splits alone); the exact MILP
(:func:`jaxcert.bounds.exact.exact_margin_check`) gives each example's true verdict. The search is
deterministic apart from when it stops, so with a generous ``--timeout`` the domain counts compare the
two trees. Per example: the MILP's verdict, and per setting the state, domains and search seconds.
Prints a markdown table and writes JSON (``--out``). The run is only read.

    python experiments/bab_inherit.py runs/campaign/mlp_14x14-ibp-eps0.1-e20-s1000-lr0.002 --select bounds
    python experiments/bab_inherit.py --random 32,32 --eps 0.3 --select bounds --limit 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import jaxcert
from jaxcert.bab import BabOptions, check_bab_options
from jaxcert.bab.search import Bounder, bab_example
from jaxcert.bab.stage import margin_rows
from jaxcert.bounds import margin_lower_bounds
from jaxcert.bounds.exact import exact_margin_check
from jaxcert.certify import certify_dataset
from jaxcert.data import Dataset
from jaxcert.nets import forward, init_params
from jaxcert.nets.architectures import mlp
from jaxcert.provenance import provenance
from jaxcert.runs import load_test_split


def random_case(widths: tuple[int, ...], seed: int, size: int) -> tuple[Any, Any, Dataset]:
    """A randomly initialised ``mlp(widths)`` on 5 inputs with 3 classes, and ``size`` standard normal
    points labelled by the net (so every one is correctly classified), data range ``[-10, 10]``."""
    arch = mlp(widths, num_classes=3, dataset="none")
    params = init_params(arch, (5,), seed=seed)
    x = np.random.default_rng(seed).normal(size=(size, 5)).astype(np.float32)
    y = np.asarray(forward(arch, params, x)).argmax(axis=1).astype(np.int32)
    return arch, params, Dataset(x, y, 3, f"random mlp{widths} seed {seed}", input_range=(-10.0, 10.0))


def compare(arch: Any, params: Any, ds: Any, eps: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per selected example (see the module doc); ``lower`` is the tree's bound when the search
    stopped (the minimum over its leaves)."""
    x, y = np.asarray(ds.x, np.float32), np.asarray(ds.y)
    lo, hi = (float(v) for v in ds.input_range)
    if args.select == "cascade":
        rows = np.flatnonzero(certify_dataset(arch, params, ds, eps, progress=False).states == "unknown")
    else:
        correct = np.asarray(forward(arch, params, x)).argmax(axis=1) == y
        bound = np.asarray(margin_lower_bounds(arch, params, x, y, eps, relaxation="alpha-crown", lo=lo, hi=hi))
        rows = np.flatnonzero(correct & (bound.min(axis=1) <= 0))
    rows = rows[: args.max_examples]
    classes = int(np.asarray(forward(arch, params, x[:1])).shape[-1])
    settings = {name: BabOptions(timeout=args.timeout, max_domains=args.max_domains, batch=args.batch, inherit=inherit)
                for name, inherit in (("inherit", True), ("scratch", False))}  # fmt: skip
    bounders = {name: Bounder(arch, params, x.shape[1:], classes, o) for name, o in settings.items()}
    records = []
    for r in rows:
        lower, upper = np.clip(x[r] - np.float32(eps), lo, hi), np.clip(x[r] + np.float32(eps), lo, hi)
        C = margin_rows(int(y[r]), classes)
        record: dict[str, Any] = {"example": int(r)}
        record["milp"] = exact_margin_check(arch, params, lower, upper, C, time_limit=args.milp_time_limit).status
        for name, options in settings.items():
            result = bab_example(bounders[name], lower, upper, C, int(y[r]), options)
            record[name] = {"state": result.state, "domains": result.domains, "seconds": round(result.seconds, 2),
                            "lower": None if np.isnan(result.lower) else round(result.lower, 5)}  # fmt: skip
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


def markdown(records: list[dict[str, Any]]) -> str:
    lines = ["| example | MILP | inherit: state | domains | bound | s | scratch: state | domains | bound | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for rec in records:
        a, b = rec["inherit"], rec["scratch"]
        lines.append(f"| {rec['example']} | {rec['milp']} | {a['state']} | {a['domains']} | {a['lower']} | "
                     f"{a['seconds']} | {b['state']} | {b['domains']} | {b['lower']} | {b['seconds']} |")  # fmt: skip
    both = [r for r in records if r["inherit"]["state"] == r["scratch"]["state"] == "verified"]
    if both:
        ratio = np.exp(np.mean([np.log(r["scratch"]["domains"] / r["inherit"]["domains"]) for r in both]))
        total = (sum(r["inherit"]["domains"] for r in both), sum(r["scratch"]["domains"] for r in both))
        lines += ["", f"Verified by both: {len(both)} examples, {total[0]} domains inherited against {total[1]} "
                      f"from scratch (geometric mean ratio scratch/inherit {ratio:.2f})."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, nargs="?", help="a training run folder (read only)")
    p.add_argument("--random", help="instead of a run: a random mlp of these comma-separated widths (random_case)")
    p.add_argument("--seed", type=int, default=0, help="the random mlp's seed")
    p.add_argument("--limit", type=int, default=500, help="first test examples given to the cascade")
    p.add_argument("--select", choices=("cascade", "bounds"), default="cascade", help="which examples (module doc)")
    p.add_argument("--max-examples", type=int, default=12, help="examples compared at most")
    p.add_argument("--eps", type=float, help="radius (default: the run's evaluation eps)")
    p.add_argument("--timeout", type=float, default=120.0, help="branch-and-bound seconds per example")
    p.add_argument("--max-domains", type=int, default=20_000, help="domains per example at most")
    p.add_argument("--batch", type=int, default=64, help="domains per step")
    p.add_argument("--milp-time-limit", type=float, default=120.0, help="MILP seconds per example")
    p.add_argument("--out", type=Path, default=Path("experiments/results/bab_inherit.json"))
    args = p.parse_args(argv)
    if (args.run_dir is None) == (args.random is None):
        raise SystemExit("error: give exactly one of a run folder and --random WIDTHS")
    if args.run_dir is not None and not (args.run_dir / "config.json").is_file():
        raise SystemExit(f"error: {args.run_dir} is not a training run folder (no config.json)")
    if args.random is not None and args.eps is None:
        raise SystemExit("error: --random needs --eps")
    try:
        check_bab_options(BabOptions(timeout=args.timeout, max_domains=args.max_domains, batch=args.batch))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if args.random is not None:
        arch, params, ds = random_case(tuple(int(w) for w in args.random.split(",")), args.seed, args.limit)
        eps = args.eps
    else:
        arch, params, config = jaxcert.load_run(args.run_dir)
        ds, eps = load_test_split(config, limit=args.limit), config.test_eps if args.eps is None else args.eps
    began = time.time()
    records = compare(arch, params, ds, eps, args)
    table = markdown(records)
    print(table)
    out = {"run_dir": str(args.run_dir), "random": args.random, "seed": args.seed, "eps": eps, "limit": args.limit,
           "select": args.select, "max_examples": args.max_examples, "timeout": args.timeout,
           "max_domains": args.max_domains, "batch": args.batch, "records": records, "table": table,
           "seconds": round(time.time() - began, 1), "load": os.getloadavg(), "provenance": provenance()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
