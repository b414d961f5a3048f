"""Certify a network example by example: ``python -m jaxcert.certify RUN_DIR`` and :func:`certify_dataset`.

Every example of the test set ends in exactly one state, decided in this order (cheapest first):

    falsified   a concrete counterexample x' was found and checked by a forward pass:
                ‖x' - x‖∞ ≤ ε, lo ≤ x' ≤ hi and argmax f(x') ≠ y — the clean point itself (misclassified),
                PGD (random restarts), APGD-CE, or the MILP's minimiser;
    verified    a relaxation of the cascade (e.g. ibp → crown-ibp → crown → alpha-crown), each tried only on
                the examples the previous ones left open, proves lb(z_y - z_j) > 0 for all j ≠ y over
                the clipped ε-box — or the exact MILP (``milp=True``) proves it;
    timeout     the MILP hit its per-example time limit;
    unknown     none of the above.

Since a verified example has no counterexample in the box, ``cert_acc ≤ robust_acc ≤ pgd_acc ≤ clean_acc``
(``robust_acc``: not falsified by any attack). ``cert_acc/<r>`` is the fraction certified by the cascade up
to and including relaxation ``r``. Everything is traced at matmul precision ``"highest"`` (see
:mod:`jaxcert.evaluate`). Results: ``certify.json`` (summary and per-example states) and ``certify.md``.
With ``--distributed`` (``distributed=True``) the processes of a multi-process run share the work and
process 0 writes the same report as one process would (``_Split``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxcert.provenance import provenance

STATES = ("verified", "falsified", "unknown", "timeout")
DEFAULT_RELAXATIONS = ("ibp", "crown-ibp", "crown", "alpha-crown")
#: Relative and absolute slack of the box check of a counterexample (float32 rounding of x ± ε).
_BOX_TOL = 1e-6


@dataclasses.dataclass
class CertifyReport:
    """Per-example outcome of :func:`certify_dataset` (arrays of length ``n``)."""

    eps: float
    relaxations: tuple[str, ...]
    labels: np.ndarray
    clean: np.ndarray  # argmax f(x) = y
    pgd_robust: np.ndarray  # clean and PGD found no counterexample
    apgd_robust: np.ndarray | None  # clean and APGD-CE found none (None: APGD not run)
    states: np.ndarray  # one of STATES
    by: np.ndarray  # what decided: "clean", "pgd", "apgd", a relaxation, "milp", or ""
    margin_lower: np.ndarray  # best certified lower bound of min_j (z_y - z_j) over the box (nan: not bounded)
    counterexamples: np.ndarray  # x' of the falsified examples (nan elsewhere)
    settings: dict[str, Any]
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return int(self.labels.size)

    def counts(self) -> dict[str, int]:
        return {s: int(np.sum(self.states == s)) for s in STATES}

    def accuracies(self) -> dict[str, float]:
        """``clean_acc``, ``pgd_acc``, ``apgd_acc``, ``robust_acc``, ``cert_acc`` and the cumulative
        ``cert_acc/<relaxation>`` (and ``cert_acc/milp``) as fractions of ``n``."""
        out = {"clean_acc": float(np.mean(self.clean)), "pgd_acc": float(np.mean(self.pgd_robust))}
        if self.apgd_robust is not None:
            out["apgd_acc"] = float(np.mean(self.apgd_robust))
        out["robust_acc"] = float(np.mean(self.states != "falsified"))
        out["cert_acc"] = float(np.mean(self.states == "verified"))
        done = np.zeros(self.n, bool)
        for name in (*self.relaxations, *(("milp",) if self.settings.get("milp") else ())):
            done |= (self.states == "verified") & (self.by == name)
            out[f"cert_acc/{name}"] = float(np.mean(done))
        return out

    def to_json(self) -> dict[str, Any]:
        examples = [
            {
                "index": i,
                "label": int(self.labels[i]),
                "state": str(self.states[i]),
                "by": str(self.by[i]),
                "margin_lower_bound": None if np.isnan(self.margin_lower[i]) else float(self.margin_lower[i]),
            }
            for i in range(self.n)
        ]
        summary = {"examples": self.n, "eps": self.eps, **self.counts(), **self.accuracies()}
        summary["seconds"] = self.seconds
        return {"summary": summary, "settings": self.settings, "provenance": provenance(), "examples": examples}

    def markdown(self) -> str:
        """A markdown summary: the accuracies, and the states by the method that decided them."""
        acc = self.accuracies()
        lines = [
            f"# Certification at ε = {self.eps:g} on {self.n} examples ({self.settings.get('data', '')})",
            "",
            "| metric | value |",
            "|---|---|",
            *(f"| {k} | {100 * v:.2f}% |" for k, v in acc.items()),
            "",
            "| state | decided by | examples |",
            "|---|---|---|",
        ]
        for state in STATES:
            decided = self.by[self.states == state]
            for method in sorted(set(decided.tolist())):
                lines.append(f"| {state} | {method or '-'} | {int(np.sum(decided == method))} |")
        lines += ["", f"Settings: `{json.dumps(self.settings)}`; {self.seconds:.1f} s.", ""]
        return "\n".join(lines)


def write_report(report: CertifyReport, directory: str | Path) -> tuple[Path, Path]:
    """``certify.json`` and ``certify.md`` in ``directory``."""
    directory = Path(directory)
    json_path, md_path = directory / "certify.json", directory / "certify.md"
    json_path.write_text(json.dumps(report.to_json(), indent=2))
    md_path.write_text(report.markdown())
    return json_path, md_path


@functools.cache
def _jitted() -> dict[str, Any]:
    """The jitted batch functions (built on first use: importing this module does not import JAX)."""
    import jax
    import jax.numpy as jnp

    from jaxcert.attacks.apgd import apgd
    from jaxcert.attacks.pgd import pgd
    from jaxcert.bounds import margin_lower_bounds
    from jaxcert.nets.network import forward

    @functools.partial(jax.jit, static_argnames=("arch", "pgd_steps", "pgd_restarts", "apgd_steps", "apgd_restarts"))
    def attacks(arch, params, x, y, eps, key, lo, hi, *, pgd_steps, pgd_restarts, apgd_steps, apgd_restarts):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            fn = lambda v: forward(arch, params, v)
            k_pgd, k_apgd = jax.random.split(key)
            x_pgd = pgd(fn, x, y, eps, key=k_pgd, steps=pgd_steps, restarts=pgd_restarts, lo=lo, hi=hi)
            if apgd_steps == 0:
                return x_pgd, x
            return x_pgd, apgd(fn, x, y, eps, key=k_apgd, steps=apgd_steps, restarts=apgd_restarts, lo=lo, hi=hi)

    @functools.partial(jax.jit, static_argnames=("arch",))
    def predict(arch, params, x):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            return jnp.argmax(forward(arch, params, x), axis=-1)

    @functools.partial(jax.jit, static_argnames=("arch", "relaxation", "lo", "hi"))
    def min_margin(arch, params, x, y, eps, *, relaxation, lo, hi):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            lb = margin_lower_bounds(arch, params, x, y, eps, relaxation=relaxation, lo=lo, hi=hi)
        return jnp.min(lb, axis=-1)

    from jaxcert.bounds.crown import crown_preactivation_bounds

    @functools.partial(jax.jit, static_argnames=("arch",))
    def preactivation(arch, params, lower, upper):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            return crown_preactivation_bounds(arch, params, lower, upper)

    return {"attacks": attacks, "predict": predict, "min_margin": min_margin, "preactivation": preactivation}


def bound_batch_size(relaxation: str, batch_size: int) -> int:
    """Examples per call of a relaxation: ``batch_size``, divided by 8 for the back-substitution ones
    (CROWN/DeepPoly variants, alpha-CROWN), whose memory grows with the number of neurons per example."""
    from jaxcert.train.configs import relaxation_cost

    return batch_size if relaxation_cost(relaxation) < 4 else max(1, batch_size // 8)


def _chunks(index: np.ndarray, size: int):
    """``(padded index array of length size, true length)`` covering ``index`` (padding repeats index[0])."""
    for start in range(0, index.size, size):
        part = index[start : start + size]
        yield np.concatenate([part, np.full(size - part.size, index[0], part.dtype)]), part.size


class _Split:
    """The work of :func:`certify_dataset` split over the ``P`` processes of a multi-process run.

    Each stage cuts its examples into the same chunks as a single process would (the attack batches with
    their keys ``fold_in(key(seed), b)``, the chunks of the examples each relaxation still has open, the
    MILP's examples one by one); process ``i`` handles the chunks ``c ≡ i (mod P)``, and after the stage
    row ``r`` of every per-example array is taken from the process that handled it:

        a[r] ← a_{owner(r)}[r],   owner(r) = c(r) mod P   (gathered with ``process_allgather``),

    so every process continues with the same arrays, and the end result equals a single process's.
    """

    def __init__(self, n: int, methods: tuple[str, ...], distributed: bool) -> None:
        import jax

        self.n = n
        self.index, self.count = (jax.process_index(), jax.process_count()) if distributed else (0, 1)
        self.names = np.array((*STATES, *methods), dtype=object)  # strings travel as indices into these

    def mine(self, chunks: range) -> set[int]:
        """The chunks this process handles."""
        return {c for c in chunks if c % self.count == self.index}

    def owner(self, chunks: list[np.ndarray]) -> np.ndarray:
        """Per row: the process that handled its chunk (0 for rows in no chunk: equal everywhere)."""
        out = np.zeros(self.n, np.int32)
        for c, rows in enumerate(chunks):
            out[rows] = c % self.count
        return out

    def merge(self, owner: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every array with row ``r`` from process ``owner[r]`` (the arrays themselves with one process)."""
        if self.count == 1:
            return arrays
        from jax.experimental import multihost_utils

        code = {name: i for i, name in enumerate(self.names.tolist())}

        def encode(a: np.ndarray) -> np.ndarray:
            if a.dtype == object:
                return np.array([code[v] for v in a], np.int32)
            return a.view(np.uint8) if a.dtype == bool else a

        gathered = multihost_utils.process_allgather(tuple(encode(a) for a in arrays))  # each (P, n, ...)
        rows = np.arange(self.n)
        picked = [np.asarray(g)[owner, rows] for g in gathered]
        return tuple(
            self.names[p] if a.dtype == object else p.astype(a.dtype) for a, p in zip(arrays, picked, strict=True)
        )


def is_counterexample(
    arch: Any, params: Any, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, eps: float, lo: float, hi: float
) -> np.ndarray:
    """Per example: ``x_adv`` lies in the clipped ε-box of ``x`` and the network misclassifies it."""
    slack = _BOX_TOL * (1.0 + np.abs(x))
    axes = tuple(range(1, x.ndim))
    in_box = np.all(np.abs(x_adv - x) <= eps + slack, axis=axes)
    in_box &= np.all((x_adv >= lo - slack) & (x_adv <= hi + slack), axis=axes)
    pred = np.asarray(_jitted()["predict"](arch, params, np.asarray(x_adv, np.float32)))
    return in_box & (pred != y)


def certify_dataset(
    arch: Any,
    params: Any,
    ds: Any,
    eps: float,
    *,
    relaxations: tuple[str, ...] | list[str] = DEFAULT_RELAXATIONS,
    pgd_steps: int = 20,
    pgd_restarts: int = 3,
    apgd_steps: int = 100,
    apgd_restarts: int = 1,
    milp: bool = False,
    milp_time_limit: float = 10.0,
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    distributed: bool = False,
) -> CertifyReport:
    """States of the first ``limit`` examples of ``ds`` (a :class:`jaxcert.data.Dataset`) at radius ``eps``
    (ℓ∞, clipped to ``ds.input_range``): attacks, then the relaxation cascade, then optionally the MILP.

    ``distributed``: every process of a multi-process run calls this with the same arguments and the work
    is split over the ``P`` processes (see :class:`_Split`); every process gets the whole report, equal to a
    single process's."""
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from jaxcert.bounds import check_eps, get_relaxation

    relaxations = tuple(relaxations)
    for name in relaxations:
        get_relaxation(name)
    check_eps(eps)
    for name, value, least in (("pgd_steps", pgd_steps, 0), ("pgd_restarts", pgd_restarts, 1),
                               ("apgd_steps", apgd_steps, 0), ("apgd_restarts", apgd_restarts, 1),
                               ("batch_size", batch_size, 1)):  # fmt: skip
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if milp and milp_time_limit <= 0:
        raise ValueError(f"milp_time_limit must be > 0 seconds, got {milp_time_limit}")
    if limit is not None:
        ds = ds.take(limit)
    n = len(ds)
    if n == 0:
        raise ValueError(f"cannot certify an empty data set ({ds.name}, limit={limit})")
    fns = _jitted()
    start_time = time.time()
    lo, hi = (float(v) for v in ds.input_range)
    x, y = np.asarray(ds.x, np.float32), np.asarray(ds.y)
    size = min(batch_size, n)
    key = jax.random.key(seed)
    eps32 = jnp.float32(eps)

    split = _Split(n, ("", "clean", "pgd", "apgd", *relaxations, "milp"), distributed)
    states = np.full(n, "unknown", dtype=object)
    by = np.full(n, "", dtype=object)
    margin_lower = np.full(n, np.nan)
    adversarial = np.full(x.shape, np.nan, np.float32)
    clean = np.zeros(n, bool)
    pgd_broken = np.zeros(n, bool)
    apgd_broken = np.zeros(n, bool)

    mine = split.mine(range(-(-n // size)))
    bar = tqdm(total=sum(min(size, n - b * size) for b in mine), desc="attacks", disable=not progress, leave=False,
               file=sys.stderr)  # fmt: skip
    for b, (idx, k) in enumerate(_chunks(np.arange(n), size)):
        if b not in mine:
            continue
        rows = idx[:k]
        clean[rows] = np.asarray(fns["predict"](arch, params, x[idx]))[:k] == y[rows]
        wrong = rows[~clean[rows]]
        states[wrong], by[wrong] = "falsified", "clean"
        adversarial[wrong] = x[wrong]
        x_pgd, x_apgd = fns["attacks"](
            arch, params, x[idx], y[idx], eps32, jax.random.fold_in(key, b), jnp.float32(lo), jnp.float32(hi),
            pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, apgd_steps=apgd_steps, apgd_restarts=apgd_restarts,
        )  # fmt: skip
        for name, x_adv, broken in (("pgd", x_pgd, pgd_broken), ("apgd", x_apgd, apgd_broken)):
            if name == "apgd" and apgd_steps == 0:
                continue
            x_adv = np.asarray(x_adv)[:k]
            hit = is_counterexample(arch, params, x[rows], x_adv, y[rows], eps, lo, hi) & clean[rows]
            broken[rows] |= hit
            fresh = hit & (states[rows] == "unknown")
            states[rows[fresh]], by[rows[fresh]] = "falsified", name
            adversarial[rows[fresh]] = x_adv[fresh]
        bar.update(k)
    bar.close()
    owner = split.owner([np.arange(b * size, min(n, (b + 1) * size)) for b in range(-(-n // size))])
    states, by, clean, pgd_broken, apgd_broken, adversarial = split.merge(
        owner, states, by, clean, pgd_broken, apgd_broken, adversarial
    )

    for name in relaxations:
        open_ = np.flatnonzero(states == "unknown")
        if open_.size == 0:
            break
        chunks = list(_chunks(open_, min(bound_batch_size(name, size), open_.size)))
        mine = split.mine(range(len(chunks)))
        bar = tqdm(total=sum(chunks[c][1] for c in mine), desc=name, disable=not progress, leave=False,
                   file=sys.stderr)  # fmt: skip
        for c in sorted(mine):
            idx, k = chunks[c]
            lb = np.asarray(fns["min_margin"](arch, params, x[idx], y[idx], eps32, relaxation=name, lo=lo, hi=hi))[:k]
            rows = idx[:k]
            margin_lower[rows] = np.fmax(margin_lower[rows], lb)
            proven = rows[lb > 0]
            states[proven], by[proven] = "verified", name
            bar.update(k)
        bar.close()
        owner = split.owner([idx[:k] for idx, k in chunks])
        states, by, margin_lower = split.merge(owner, states, by, margin_lower)

    if milp:
        open_ = np.flatnonzero(states == "unknown")
        rows = open_[sorted(split.mine(range(open_.size)))]
        _milp_stage(arch, params, x, y, eps, lo, hi, states, by, margin_lower, adversarial, milp_time_limit, progress,
                    rows)  # fmt: skip
        owner = split.owner([open_[i : i + 1] for i in range(open_.size)])
        states, by, margin_lower, adversarial = split.merge(owner, states, by, margin_lower, adversarial)

    settings = {
        "data": f"{ds.name}: {getattr(ds, 'source', '') or 'memory'}",
        "relaxations": list(relaxations),
        "pgd_steps": pgd_steps,
        "pgd_restarts": pgd_restarts,
        "apgd_steps": apgd_steps,
        "apgd_restarts": apgd_restarts,
        "milp": milp,
        "milp_time_limit": milp_time_limit if milp else None,
        "seed": seed,
    }
    return CertifyReport(
        eps=float(eps),
        relaxations=relaxations,
        labels=y,
        clean=clean,
        pgd_robust=clean & ~pgd_broken,
        apgd_robust=None if apgd_steps == 0 else clean & ~apgd_broken,
        states=states.astype(str),
        by=by.astype(str),
        margin_lower=margin_lower,
        counterexamples=adversarial,
        settings=settings,
        seconds=time.time() - start_time,
    )


def _milp_stage(arch, params, x, y, eps, lo, hi, states, by, margin_lower, adversarial, time_limit, progress, rows):  # type: ignore[no-untyped-def]
    """The exact MILP on the examples ``rows`` (updates the arrays in place)."""
    from tqdm import tqdm

    from jaxcert.bounds.exact import exact_margin_check

    num_classes = _num_outputs(arch, params, x[:1])
    for i in tqdm(rows, desc="milp", disable=not progress, leave=False, file=sys.stderr):
        lower = np.clip(x[i] - np.float32(eps), lo, hi)
        upper = np.clip(x[i] + np.float32(eps), lo, hi)
        others = [j for j in range(num_classes) if j != y[i]]
        C = np.zeros((len(others), num_classes))
        C[:, y[i]] = 1.0
        C[np.arange(len(others)), others] = -1.0
        pre = _jitted()["preactivation"](arch, params, lower[None], upper[None])
        check = exact_margin_check(arch, params, lower, upper, C, time_limit=time_limit, intermediate=pre)
        if check.status == "verified":
            states[i], by[i] = "verified", "milp"
            margin_lower[i] = check.lower
        elif check.status == "timeout":
            states[i], by[i] = "timeout", "milp"
        elif check.x is not None:
            x_adv = np.asarray(check.x, np.float32)[None]
            if is_counterexample(arch, params, x[i : i + 1], x_adv, y[i : i + 1], eps, lo, hi)[0]:
                states[i], by[i] = "falsified", "milp"
                adversarial[i] = x_adv[0]


def _num_outputs(arch: Any, params: Any, x: np.ndarray) -> int:
    from jaxcert.nets.network import forward

    return int(np.asarray(forward(arch, params, x)).shape[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jaxcert.certify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", help="a training run folder (the --out of python -m jaxcert.train)")
    p.add_argument("--limit", type=int, help="certify only the first N test examples (default: the whole split)")
    p.add_argument("--eps", type=float, help="radius (default: the run's evaluation eps)")
    p.add_argument("--relaxations", default=",".join(DEFAULT_RELAXATIONS), help="cascade, cheapest first")
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--pgd-restarts", type=int, default=3)
    p.add_argument("--apgd-steps", type=int, default=100, help="APGD-CE iterations (0: no APGD)")
    p.add_argument("--apgd-restarts", type=int, default=1)
    p.add_argument("--milp", action="store_true", help="exact MILP on the examples left open (tiny nets only)")
    p.add_argument("--milp-time-limit", type=float, default=10.0, help="seconds per example")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="where the test split is (default: the run's data_dir or the usual places)")
    p.add_argument("--no-progress", action="store_true")
    d = p.add_argument_group("multi-process (the examples split over the processes; process 0 writes the report)")
    d.add_argument("--distributed", action="store_true", help="join a multi-process run (jax.distributed)")
    d.add_argument("--coordinator", help="HOST:PORT of process 0 (default: auto-detected on TPU VMs / SLURM / MPI)")
    d.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
    d.add_argument("--process-id", type=int, help="this process's index in [0, N) (with --coordinator)")
    d.add_argument("--distributed-timeout", type=float, default=120.0, help="seconds for every process to join")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jaxcert.train.distributed import DistributedInitError, initialize, is_main_process

    try:
        if args.distributed:  # before anything touches the devices
            initialize(args.coordinator, args.num_processes, args.process_id, timeout=args.distributed_timeout)
        elif (args.coordinator, args.num_processes, args.process_id) != (None, None, None):
            raise ValueError("--coordinator, --num-processes and --process-id need --distributed")
        main_process = is_main_process()
        from jaxcert.runs import load_run, load_test_split

        arch, params, config = load_run(args.run_dir)
        if args.data_dir is not None and not Path(args.data_dir).exists():
            raise FileNotFoundError(f"--data-dir {args.data_dir!r} does not exist")
        ds = load_test_split(config, data_dir=args.data_dir, limit=args.limit)
        eps = config.test_eps if args.eps is None else args.eps
        relaxations = tuple(r.strip() for r in args.relaxations.split(",") if r.strip())
        if main_process:
            print(f"certifying {args.run_dir} on {len(ds)} test examples of {ds.name} ({ds.source or 'memory'}) at "
                  f"eps={eps}: {' -> '.join(relaxations)}{' -> milp' if args.milp else ''}")  # fmt: skip
        report = certify_dataset(
            arch, params, ds, eps, relaxations=relaxations, pgd_steps=args.pgd_steps,
            pgd_restarts=args.pgd_restarts, apgd_steps=args.apgd_steps, apgd_restarts=args.apgd_restarts,
            milp=args.milp, milp_time_limit=args.milp_time_limit, batch_size=args.batch_size, seed=args.seed,
            progress=main_process and not args.no_progress, distributed=args.distributed,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, DistributedInitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not main_process:  # a multi-process run reports once, from process 0
        return 0
    json_path, md_path = write_report(report, args.run_dir)
    print(report.markdown())
    print(f"written: {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
