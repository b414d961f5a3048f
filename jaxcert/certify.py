"""Certify a network example by example: ``python -m jaxcert.certify RUN_DIR`` and :func:`certify_dataset`.

Every example of the test set ends in exactly one state. The stages run cheapest per decided example
first, each only on the examples the earlier ones left open (:func:`stage_plan`): the clean prediction,
the cascade's cheap relaxations (IBP, CROWN-IBP), each PGD and APGD-CE restart, the rest of the cascade
(CROWN, alpha-CROWN), then optionally branch and bound (``--bab``, :mod:`jaxcert.bab`) and the MILP.
A verified example is never attacked (it has no counterexample) and a falsified one is never bounded.
The states:

    falsified   a concrete counterexample x' was found and checked by a forward pass:
                ‖x' - x‖∞ ≤ ε, lo ≤ x' ≤ hi and argmax f(x') ≠ y — the clean point itself (misclassified),
                PGD (random restarts), APGD-CE, branch and bound's attack or leaf LP, or the MILP's minimiser;
    verified    a relaxation of the cascade (e.g. ibp → crown-ibp → crown → alpha-crown), each tried only on
                the examples the previous ones left open, proves lb(z_y - z_j) > 0 for all j ≠ y over
                the clipped ε-box — or branch and bound (``bab=``) or the exact MILP (``milp=True``) does;
    timeout     branch and bound or the MILP hit its per-example time limit (the MILP also takes the
                examples branch and bound timed out on);
    unknown     none of the above.

Since a verified example has no counterexample in the box, ``cert_acc ≤ robust_acc ≤ pgd_acc ≤ clean_acc``
(``robust_acc``: not falsified by any attack). ``cert_acc/<r>`` is the fraction certified by the cascade up
to and including relaxation ``r``. Everything is traced at matmul precision ``"highest"`` (see
:mod:`jaxcert.evaluate`). Results: a JSON report (summary, per-stage timings, per-example states) and a
markdown one. Training writes ``certify.json`` / ``certify.md`` (its final evaluation, summarised in
``results.json``); this command writes ``certify-<eps>-<n>.json`` / ``.md`` beside them (``--output``
names them), and ``--replace`` replaces the training-time report and updates ``results.json`` instead.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxcert.cli import OneLineParser, command_name, one_line_warnings
from jaxcert.crown_options import CrownOptions, relaxation_option_help
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
    pgd_robust: np.ndarray  # clean and PGD found no counterexample (verified examples are not attacked: none exists)
    states: np.ndarray  # one of STATES
    by: np.ndarray  # what decided: "clean", "pgd", "apgd", a relaxation, "milp", or ""
    margin_lower: np.ndarray  # best certified lower bound of min_j (z_y - z_j) over the box (nan: not bounded)
    counterexamples: np.ndarray  # x' of the falsified examples (nan elsewhere)
    settings: dict[str, Any]
    stages: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"stage", "examples", "seconds"}
    bab_domains: np.ndarray | None = None  # domains branch and bound bounded per example (0: not run on it)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return int(self.labels.size)

    def counts(self) -> dict[str, int]:
        return {s: int(np.sum(self.states == s)) for s in STATES}

    def accuracies(self) -> dict[str, float]:
        """``clean_acc``, ``pgd_acc`` (not falsified by PGD), ``robust_acc`` (by no attack: PGD, APGD-CE on
        what PGD left, the MILP), ``cert_acc`` and the cumulative ``cert_acc/<relaxation>`` (and
        ``cert_acc/bab``, ``cert_acc/milp``) as fractions of ``n``."""
        out = {"clean_acc": float(np.mean(self.clean)), "pgd_acc": float(np.mean(self.pgd_robust))}
        out["robust_acc"] = float(np.mean(self.states != "falsified"))
        out["cert_acc"] = float(np.mean(self.states == "verified"))
        done = np.zeros(self.n, bool)
        later = (*(("bab",) if self.settings.get("bab") else ()), *(("milp",) if self.settings.get("milp") else ()))
        for name in (*self.relaxations, *later):
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
                **({} if self.bab_domains is None else {"bab_domains": int(self.bab_domains[i])}),
            }
            for i in range(self.n)
        ]
        summary = {"examples": self.n, "eps": self.eps, **self.counts(), **self.accuracies()}
        summary["seconds"] = self.seconds
        return {
            "summary": summary,
            "settings": self.settings,
            "stages": self.stages,
            "provenance": provenance(),
            "examples": examples,
        }

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
        if self.stages:
            lines += ["", "| stage (in order) | open examples | seconds |", "|---|---|---|"]
            lines += [f"| {s['stage']} | {s['examples']} | {s['seconds']:.1f} |" for s in self.stages]
        for s in self.stages:
            if s["stage"] == "bab":
                lines += ["", f"Branch and bound: {s['domains']} domains, {s['domains_per_second']:g} domains/s "
                              f"(compilation {s['compile_seconds']:.1f} s not counted)."]  # fmt: skip
        lines += ["", f"Settings: `{json.dumps(self.settings)}`; {self.seconds:.1f} s.", ""]
        return "\n".join(lines)


def write_report(report: CertifyReport, directory: str | Path, name: str = "certify") -> tuple[Path, Path]:
    """``<name>.json`` and ``<name>.md`` in ``directory``."""
    directory = Path(directory)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps(report.to_json(), indent=2))
    md_path.write_text(report.markdown())
    return json_path, md_path


def report_name(eps: float, n: int) -> str:
    """The default name of a report written by the command line: ``certify-eps<eps>-n<n>``."""
    return f"certify-eps{eps:g}-n{n}"


def update_results(report: CertifyReport, run_dir: str | Path) -> Path:
    """Make ``run_dir/results.json`` summarise ``report`` (after it replaced the training-time
    ``certify.json``): its radius, examples, cascade and accuracies replace the old ones; the training
    figures (steps, seconds, data sources) stay."""
    path = Path(run_dir) / "results.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = {k: v for k, v in old.items() if not (k.endswith("_acc") or "_acc/" in k)}
    kept |= {"eps": report.eps, "test_examples": report.n, "relaxations": list(report.relaxations)}
    path.write_text(json.dumps({**kept, **report.accuracies(), "certified_by": "jaxcert.certify"}, indent=2))
    return path


@functools.cache
def _jitted() -> dict[str, Any]:
    """The jitted batch functions (built on first use: importing this module does not import JAX)."""
    import jax
    import jax.numpy as jnp

    from jaxcert.attacks.apgd import apgd
    from jaxcert.attacks.pgd import pgd
    from jaxcert.bounds import margin_lower_bounds
    from jaxcert.nets.network import forward

    @functools.partial(jax.jit, static_argnames=("arch", "steps"))
    def pgd_restart(arch, params, x, y, eps, key, lo, hi, *, steps):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            return pgd(lambda v: forward(arch, params, v), x, y, eps, key=key, steps=steps, restarts=1, lo=lo, hi=hi)

    @functools.partial(jax.jit, static_argnames=("arch", "steps"))
    def apgd_restart(arch, params, x, y, eps, key, lo, hi, *, steps):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            return apgd(lambda v: forward(arch, params, v), x, y, eps, key=key, steps=steps, restarts=1, lo=lo, hi=hi)

    @functools.partial(jax.jit, static_argnames=("arch",))
    def predict(arch, params, x):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            return jnp.argmax(forward(arch, params, x), axis=-1)

    @functools.partial(jax.jit, static_argnames=("arch", "relaxation", "lo", "hi", "options"))
    def min_margin(arch, params, x, y, eps, *, relaxation, lo, hi, options=()):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            lb = margin_lower_bounds(arch, params, x, y, eps, relaxation=relaxation, lo=lo, hi=hi, **dict(options))
        return jnp.min(lb, axis=-1)

    from jaxcert.bounds.crown import crown_preactivation_bounds

    @functools.partial(jax.jit, static_argnames=("arch",))
    def preactivation(arch, params, lower, upper):  # type: ignore[no-untyped-def]
        with jax.default_matmul_precision("highest"):
            return crown_preactivation_bounds(arch, params, lower, upper)

    return {
        "pgd": pgd_restart,
        "apgd": apgd_restart,
        "predict": predict,
        "min_margin": min_margin,
        "preactivation": preactivation,
    }


def bound_batch_size(relaxation: str, batch_size: int) -> int:
    """Examples per call of a relaxation: ``batch_size``, divided by 8 for the back-substitution ones
    (cost rank of CROWN's or above: CROWN/DeepPoly variants, alpha-CROWN), whose memory grows with the number
    of neurons per example."""
    from jaxcert.bounds.registry import is_cheap

    return batch_size if is_cheap(relaxation) else max(1, batch_size // 8)


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
    bab: Any = None,
    relaxation_options: Mapping[str, Any] | None = None,
) -> CertifyReport:
    """States of the first ``limit`` examples of ``ds`` (a :class:`jaxcert.data.Dataset`) at radius ``eps``
    (ℓ∞, clipped to ``ds.input_range``), by the stages of :func:`stage_plan`, each run only on the examples
    the earlier ones left open: the clean prediction, the cheap relaxations of the cascade, every PGD
    restart and APGD-CE restart, the expensive relaxations, then optionally branch and bound (``bab``: a
    :class:`jaxcert.bab.BabOptions`, None: no branch and bound) and the MILP.

    ``distributed``: every process of a multi-process run calls this with the same arguments and the work
    is split over the ``P`` processes (see :class:`_Split`); every process gets the whole report, equal to a
    single process's.

    ``relaxation_options`` (:class:`jaxcert.crown_options.CrownOptions` as a dict): every relaxation of the
    cascade gets those it takes (:func:`jaxcert.bounds.registry.options_by_relaxation`; one that none takes is
    a ``ValueError``); the report's settings record them."""
    import jax
    import jax.numpy as jnp

    from jaxcert.bounds import check_eps, get_relaxation
    from jaxcert.bounds.registry import options_by_relaxation

    relaxations = tuple(relaxations)
    for name in relaxations:
        get_relaxation(name)
    options = CrownOptions.from_dict(relaxation_options or {})
    per_relaxation = options_by_relaxation(relaxations, options)
    check_eps(eps)
    for name, value, least in (("pgd_steps", pgd_steps, 0), ("pgd_restarts", pgd_restarts, 1),
                               ("apgd_steps", apgd_steps, 0), ("apgd_restarts", apgd_restarts, 1),
                               ("batch_size", batch_size, 1)):  # fmt: skip
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if milp and milp_time_limit <= 0:
        raise ValueError(f"milp_time_limit must be > 0 seconds, got {milp_time_limit}")
    if bab is not None:
        from jaxcert.bab import BabOptions, check_bab_options

        if not isinstance(bab, BabOptions):
            raise ValueError(f"bab must be a jaxcert.bab.BabOptions or None, got {type(bab).__name__}")
        check_bab_options(bab)
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
    k_pgd, k_apgd = jax.random.split(jax.random.key(seed))
    eps32, lo32, hi32 = jnp.float32(eps), jnp.float32(lo), jnp.float32(hi)

    split = _Split(n, ("", "clean", "pgd", "apgd", *relaxations, "bab", "milp"), distributed)
    st = _State.empty(x)
    timings: list[dict[str, Any]] = []

    def run(desc: str, rows: np.ndarray, chunk: int, work: Any, fields: tuple[str, ...]) -> None:
        """``work(c, idx, k)`` on this process's chunks of ``rows``, then every process gets every row."""
        began = time.time()
        chunks = list(_chunks(rows, chunk)) if rows.size else []
        mine = sorted(split.mine(range(len(chunks))))
        bar = _bar(desc, sum(chunks[c][1] for c in mine), progress)
        for c in mine:
            idx, k = chunks[c]
            work(c, idx, k)
            bar.update(k)
        bar.close()
        st.merge(split, [idx[:k] for idx, k in chunks], fields)
        timings.append({"stage": desc, "examples": int(rows.size), "seconds": round(time.time() - began, 3)})

    def clean_work(c: int, idx: np.ndarray, k: int) -> None:
        rows = idx[:k]
        st.clean[rows] = np.asarray(fns["predict"](arch, params, x[idx]))[:k] == y[rows]
        wrong = rows[~st.clean[rows]]
        st.states[wrong], st.by[wrong] = "falsified", "clean"
        st.adversarial[wrong] = x[wrong]

    def bound_work(name: str):  # type: ignore[no-untyped-def]
        def work(c: int, idx: np.ndarray, k: int) -> None:
            kwargs = {"relaxation": name, "lo": lo, "hi": hi, "options": tuple(per_relaxation[name].items())}
            lb = np.asarray(fns["min_margin"](arch, params, x[idx], y[idx], eps32, **kwargs))[:k]
            rows = idx[:k]
            st.margin_lower[rows] = np.fmax(st.margin_lower[rows], lb)
            proven = rows[lb > 0]
            st.states[proven], st.by[proven] = "verified", name

        return work

    def attack_work(name: str, restart: int):  # type: ignore[no-untyped-def]
        key, broken = (k_pgd, st.pgd_broken) if name == "pgd" else (k_apgd, st.apgd_broken)

        def work(c: int, idx: np.ndarray, k: int) -> None:
            chunk_key = jax.random.fold_in(jax.random.fold_in(key, restart), c)
            if name == "pgd":
                x_adv = fns["pgd"](arch, params, x[idx], y[idx], eps32, chunk_key, lo32, hi32, steps=pgd_steps)
            else:
                x_adv = fns["apgd"](arch, params, x[idx], y[idx], eps32, chunk_key, lo32, hi32, steps=apgd_steps)
            rows, x_adv = idx[:k], np.asarray(x_adv)[:k]
            hit = is_counterexample(arch, params, x[rows], x_adv, y[rows], eps, lo, hi) & st.clean[rows]
            broken[rows] |= hit
            fresh = hit & (st.states[rows] == "unknown")
            st.states[rows[fresh]], st.by[rows[fresh]] = "falsified", name
            st.adversarial[rows[fresh]] = x_adv[fresh]

        return work

    bound_fields = ("states", "by", "margin_lower")
    attack_fields = ("states", "by", "pgd_broken", "apgd_broken", "adversarial")
    for stage in stage_plan(relaxations, pgd_restarts, apgd_restarts if apgd_steps > 0 else 0):
        if stage.kind == "clean":
            run("clean", np.arange(n), size, clean_work, ("states", "by", "clean", "adversarial"))
            continue
        open_ = np.flatnonzero(st.states == "unknown")
        if stage.kind == "bound":
            chunk = chunk_size(open_.size, bound_batch_size(stage.name, size))
            run(stage.name, open_, chunk, bound_work(stage.name), bound_fields)
        else:
            label = stage.name if stage.restarts == 1 else f"{stage.name} {stage.restart + 1}/{stage.restarts}"
            run(label, open_, chunk_size(open_.size, size), attack_work(stage.name, stage.restart), attack_fields)

    if bab is not None:
        began = time.time()
        open_ = np.flatnonzero(st.states == "unknown")
        rows = open_[sorted(split.mine(range(open_.size)))]
        compile_seconds = _bab_stage(arch, params, x, y, eps, lo, hi, st, bab, progress, rows)
        st.merge(split, [open_[i : i + 1] for i in range(open_.size)], (*_BAB_FIELDS, "bab_domains"))
        seconds = time.time() - began
        domains = int(st.bab_domains[open_].sum())
        timings.append({"stage": "bab", "examples": int(open_.size), "seconds": round(seconds, 3),
                        "domains": domains, "compile_seconds": round(compile_seconds, 3),
                        "domains_per_second": round(domains / max(seconds - compile_seconds, 1e-9), 1)})  # fmt: skip

    if milp:
        began = time.time()
        open_ = np.flatnonzero((st.states == "unknown") | ((st.states == "timeout") & (st.by == "bab")))
        rows = open_[sorted(split.mine(range(open_.size)))]
        _milp_stage(arch, params, x, y, eps, lo, hi, st.states, st.by, st.margin_lower, st.adversarial,
                    milp_time_limit, progress, rows)  # fmt: skip
        st.merge(split, [open_[i : i + 1] for i in range(open_.size)], ("states", "by", "margin_lower", "adversarial"))
        timings.append({"stage": "milp", "examples": int(open_.size), "seconds": round(time.time() - began, 3)})

    settings = {
        "data": f"{ds.name}: {getattr(ds, 'source', '') or 'memory'}",
        "relaxations": list(relaxations),
        "relaxation_options": options.to_dict(),
        "pgd_steps": pgd_steps,
        "pgd_restarts": pgd_restarts,
        "apgd_steps": apgd_steps,
        "apgd_restarts": apgd_restarts,
        "milp": milp,
        "milp_time_limit": milp_time_limit if milp else None,
        "bab": None if bab is None else dataclasses.asdict(bab),
        "seed": seed,
    }
    return CertifyReport(
        eps=float(eps),
        relaxations=relaxations,
        labels=y,
        clean=st.clean,
        pgd_robust=st.clean & ~st.pgd_broken,
        states=st.states.astype(str),
        by=st.by.astype(str),
        margin_lower=st.margin_lower,
        counterexamples=st.adversarial,
        settings=settings,
        stages=timings,
        seconds=time.time() - start_time,
        bab_domains=None if bab is None else st.bab_domains,
    )


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of :func:`certify_dataset`: ``kind`` "clean", "bound" (relaxation ``name``) or "attack"
    (``name`` "pgd" or "apgd", restart ``restart`` of ``restarts``)."""

    kind: str
    name: str
    restart: int = 0
    restarts: int = 1


def stage_plan(relaxations: tuple[str, ...], pgd_restarts: int, apgd_restarts: int) -> list[Stage]:
    """The order of the stages, cheapest per decided example first: the clean prediction; the cascade's
    leading cheap relaxations (cost rank below CROWN's, :func:`jaxcert.bounds.registry.is_cheap`: IBP,
    CROWN-IBP: many examples per second); each PGD restart, then each APGD-CE restart (``apgd_restarts``
    0: none); the rest of the cascade.

    Each stage sees only the examples still open, so a verified example is never attacked (it has no
    counterexample) and a falsified one is neither attacked again nor bounded."""
    from jaxcert.bounds.registry import is_cheap

    cheap = 0
    while cheap < len(relaxations) and is_cheap(relaxations[cheap]):
        cheap += 1
    attacks = [Stage("attack", "pgd", r, pgd_restarts) for r in range(pgd_restarts)]
    attacks += [Stage("attack", "apgd", r, apgd_restarts) for r in range(apgd_restarts)]
    bounds = [Stage("bound", name) for name in relaxations]
    return [Stage("clean", "clean"), *bounds[:cheap], *attacks, *bounds[cheap:]]


def chunk_size(open_examples: int, cap: int) -> int:
    """Examples per call for ``open_examples`` open ones: the next power of two (at least 8), at most ``cap``
    — few distinct shapes, so few compilations, and little padding when only a few examples are left."""
    return max(1, min(cap, max(8, 1 << max(open_examples - 1, 0).bit_length())))


@dataclasses.dataclass
class _State:
    """The per-example arrays :func:`certify_dataset` fills stage by stage."""

    states: np.ndarray
    by: np.ndarray
    margin_lower: np.ndarray
    adversarial: np.ndarray
    clean: np.ndarray
    pgd_broken: np.ndarray
    apgd_broken: np.ndarray
    bab_domains: np.ndarray

    @classmethod
    def empty(cls, x: np.ndarray) -> _State:
        n = x.shape[0]
        return cls(
            states=np.full(n, "unknown", dtype=object), by=np.full(n, "", dtype=object),
            margin_lower=np.full(n, np.nan), adversarial=np.full(x.shape, np.nan, np.float32),
            clean=np.zeros(n, bool), pgd_broken=np.zeros(n, bool), apgd_broken=np.zeros(n, bool),
            bab_domains=np.zeros(n, np.int64),
        )  # fmt: skip

    def merge(self, split: _Split, chunks: list[np.ndarray], fields: tuple[str, ...]) -> None:
        """After a stage: row ``r`` of each of ``fields`` from the process that handled its chunk."""
        merged = split.merge(split.owner(chunks), *(getattr(self, f) for f in fields))
        for f, value in zip(fields, merged, strict=True):
            setattr(self, f, value)


def _bar(desc: str, total: int, progress: bool):  # type: ignore[no-untyped-def]
    """A tqdm bar on stderr (with its ETA) for one stage."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False, file=sys.stderr)


_BAB_FIELDS = ("states", "by", "margin_lower", "adversarial")


def _bab_stage(arch, params, x, y, eps, lo, hi, st, options, progress, rows) -> float:  # type: ignore[no-untyped-def]
    """Branch and bound (:mod:`jaxcert.bab`) on the examples ``rows`` (updates ``st`` in place); a
    counterexample counts only if :func:`is_counterexample` confirms it. Returns the compile seconds."""
    from jaxcert.bab.stage import run_bab

    results, compile_seconds = run_bab(arch, params, x, y, eps, lo, hi, rows, options,
                                       _num_outputs(arch, params, x[:1]), progress)  # fmt: skip
    for i, result in results.items():
        st.bab_domains[i] = result.domains
        if not np.isnan(result.lower):
            st.margin_lower[i] = np.fmax(st.margin_lower[i], result.lower)
        if result.state == "falsified":
            x_adv = np.asarray(result.x, np.float32)[None]
            if is_counterexample(arch, params, x[i : i + 1], x_adv, y[i : i + 1], eps, lo, hi)[0]:
                st.states[i], st.by[i], st.adversarial[i] = "falsified", "bab", x_adv[0]
        elif result.state in ("verified", "timeout"):
            st.states[i], st.by[i] = result.state, "bab"
    return compile_seconds


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
    p = OneLineParser(
        prog=command_name("jaxcert.certify"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", help="a training run folder (the --out of python -m jaxcert.train)")
    p.add_argument("--limit", type=int, help="certify only the first N test examples (default: the whole split)")
    p.add_argument("--eps", type=float, help="radius (default: the run's evaluation eps)")
    p.add_argument("--relaxations", default=",".join(DEFAULT_RELAXATIONS), help="cascade, cheapest first")
    p.add_argument(
        "--relaxation-option", action="append", default=[], metavar="NAME=VALUE",
        help="an option of the CROWN-family relaxations (repeatable; given to every relaxation of the cascade that "
        f"takes it, an option none takes is an error): {relaxation_option_help()}",
    )  # fmt: skip
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--pgd-restarts", type=int, default=3)
    p.add_argument("--apgd-steps", type=int, default=100, help="APGD-CE iterations (0: no APGD)")
    p.add_argument("--apgd-restarts", type=int, default=1)
    p.add_argument("--milp", action="store_true", help="exact MILP on the examples left open (tiny nets only)")
    p.add_argument("--milp-time-limit", type=float, default=10.0, help="seconds per example")
    b = p.add_argument_group("branch and bound (after the cascade, on the examples it leaves open; jaxcert.bab)")
    b.add_argument("--bab", action="store_true", help="run branch and bound over ReLU splits")
    b.add_argument("--bab-timeout", type=float, help="seconds of search per example (default 10)")
    b.add_argument("--bab-domains", type=int, help="domains bounded per example at most (default 100000)")
    b.add_argument("--bab-batch", type=int, help="domains bounded per step, one program (even; default 64)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="report name in RUN_DIR (default: certify-eps<eps>-n<examples>)")
    p.add_argument("--replace", action="store_true",
                   help="replace the training-time certify.json/.md and update results.json to match")  # fmt: skip
    p.add_argument("--data-dir", help="where the test split is (default: the run's data_dir or the usual places)")
    p.add_argument("--no-progress", action="store_true")
    d = p.add_argument_group("multi-process (the examples split over the processes; process 0 writes the report)")
    d.add_argument("--distributed", action="store_true", help="join a multi-process run (jax.distributed)")
    d.add_argument("--coordinator", help="HOST:PORT of process 0 (default: auto-detected on TPU VMs / SLURM / MPI)")
    d.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
    d.add_argument("--process-id", type=int, help="this process's index in [0, N) (with --coordinator)")
    d.add_argument("--distributed-timeout", type=float, default=120.0, help="seconds for every process to join")
    return p.parse_args(argv)


def bab_options(args: argparse.Namespace) -> Any:
    """The :class:`jaxcert.bab.BabOptions` of ``--bab`` and its ``--bab-*`` flags (None without ``--bab``),
    checked (one-line ``ValueError``) before any set-up work."""
    from jaxcert.bab import BabOptions, check_bab_options

    given = {name: value for name, value in (("timeout", args.bab_timeout), ("max_domains", args.bab_domains),
                                             ("batch", args.bab_batch)) if value is not None}  # fmt: skip
    if not args.bab:
        if given:
            flags = ", ".join("--bab-" + {"max_domains": "domains"}.get(k, k) for k in given)
            raise ValueError(f"{flags} need --bab")
        return None
    options = BabOptions(**given)
    check_bab_options(options)
    return options


def cpu_convolutions_for(run_dir: str, batch: int) -> str | None:
    """The CPU convolution rule (:mod:`jaxcert.cpu_convolutions`) for the run's network, set before JAX starts
    from its ``config.json`` (``None``: XLA's defaults, or a folder without a readable config)."""
    from jaxcert.cpu_convolutions import use_eigen_for_run_if_fresh
    from jaxcert.runs import run_config

    try:
        config = run_config(run_dir)
    except (OSError, ValueError, TypeError):
        return None  # load_run reports what is wrong with the folder
    return use_eigen_for_run_if_fresh(config.arch, config.dataset, batch)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # before importing JAX: option names and values
        bab = bab_options(args)
        options = CrownOptions.parse(args.relaxation_option)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from jaxcert.train.distributed import DistributedInitError, initialize, is_main_process

    convolutions = cpu_convolutions_for(args.run_dir, args.batch_size)  # before JAX starts
    try:
        if args.distributed:  # before anything touches the devices
            initialize(args.coordinator, args.num_processes, args.process_id, timeout=args.distributed_timeout)
        elif (args.coordinator, args.num_processes, args.process_id) != (None, None, None):
            raise ValueError("--coordinator, --num-processes and --process-id need --distributed")
        main_process = is_main_process()
        relaxations = tuple(r.strip() for r in args.relaxations.split(",") if r.strip())
        from jaxcert.bounds.registry import options_by_relaxation

        options_by_relaxation(relaxations, options)  # unknown relaxations, options none takes: before loading
        from jaxcert.runs import load_run, load_test_split

        arch, params, config = load_run(args.run_dir)
        if args.data_dir is not None and not Path(args.data_dir).exists():
            raise FileNotFoundError(f"--data-dir {args.data_dir!r} does not exist")
        ds = load_test_split(config, data_dir=args.data_dir, limit=args.limit)
        eps = config.test_eps if args.eps is None else args.eps
        if args.replace and args.output:
            raise ValueError("--replace writes certify.json; it excludes --output")
        if main_process and convolutions:
            print(convolutions)
        if main_process:
            later = f"{' -> bab' if bab else ''}{' -> milp' if args.milp else ''}"
            print(f"certifying {args.run_dir} on {len(ds)} test examples of {ds.name} ({ds.source or 'memory'}) at "
                  f"eps={eps}: {' -> '.join(relaxations)}{later}")  # fmt: skip
        report = certify_dataset(
            arch, params, ds, eps, relaxations=relaxations, pgd_steps=args.pgd_steps,
            pgd_restarts=args.pgd_restarts, apgd_steps=args.apgd_steps, apgd_restarts=args.apgd_restarts,
            milp=args.milp, milp_time_limit=args.milp_time_limit, batch_size=args.batch_size, seed=args.seed,
            progress=main_process and not args.no_progress, distributed=args.distributed, bab=bab,
            relaxation_options=options.to_dict(),
        )  # fmt: skip
    except (ValueError, FileNotFoundError, DistributedInitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not main_process:  # a multi-process run reports once, from process 0
        return 0
    if args.replace:
        json_path, md_path = write_report(report, args.run_dir)
        written = [json_path, md_path, update_results(report, args.run_dir)]
    else:
        written = list(write_report(report, args.run_dir, args.output or report_name(eps, report.n)))
    print(report.markdown())
    print(f"written: {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    with one_line_warnings():
        sys.exit(main())
