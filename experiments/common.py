"""Shared helpers of the research experiments (paradox, gls_vs_ibp, robust_vs_certified).

A run is ``fit(config, arch, train_ds)``: the trainer of ``jaxcert.train`` chosen by ``config.method``
(standard, PGD, certified, RGS, PGPE) with the recipe schedule of ``config`` (clean warm-up, then ε and κ
ramped), driven over shuffled mini-batches for ``config.steps`` steps. Unlike ``jaxcert.train.loop.train``
it takes any architecture (not only registered names) and any in-memory data set (spheres of any size,
down-sampled images) and writes no checkpoints. Results go to ``experiments/results/<name>.json`` and
``<name>.md``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxcert.certify import certify_dataset
from jaxcert.data import Dataset, batches, load_dataset, num_batches
from jaxcert.evaluate import evaluate_per_example
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, split_trainable
from jaxcert.provenance import provenance
from jaxcert.train.checkpoint import Checkpoints
from jaxcert.train.configs import TrainConfig
from jaxcert.train.loop import initial_params, make_trainer
from jaxcert.train.state import TrainState

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(description: str, argv: Sequence[str] | None = None, *, sized: bool = False) -> argparse.Namespace:
    """``--quick`` (tiny smoke setting), ``--out DIR`` (results directory), ``--no-progress``, ``--seed``.

    ``sized`` scripts also take ``--full`` (the setting sized for an accelerator), ``--seeds N`` (seeds
    ``seed … seed+N-1``) and ``--eps`` (comma-separated radii); ``args.setting`` names the chosen setting."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny setting (< 1 minute), used by the tests")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for <name>.json and <name>.md")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    if sized:
        p.add_argument("--full", action="store_true", help="the setting sized for an accelerator (hours on a CPU)")
        p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the setting's)")
        p.add_argument("--eps", type=str, default=None, help="comma-separated radii (default: the setting's)")
        p.add_argument(
            "--from-partial", action="store_true",
            help="train nothing: report the runs saved in <out>/<name>.partial.json by an interrupted run",
        )  # fmt: skip
        p.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE",
            help="override one entry of the setting (a Python literal), e.g. --set reg_weight=0.5",
        )  # fmt: skip
    args = p.parse_args(argv)
    if sized:
        if args.quick and args.full:
            p.error("--quick and --full exclude each other")
        args.setting = "quick" if args.quick else "full" if args.full else "default"
        if args.seeds is not None and args.seeds < 1:
            p.error(f"--seeds must be >= 1, got {args.seeds}")
        if args.eps is not None:
            try:
                args.eps = tuple(float(e) for e in args.eps.split(","))
            except ValueError:
                p.error(f"--eps must be comma-separated numbers, got {args.eps!r}")
            if any(not math.isfinite(e) or e < 0 for e in args.eps):
                p.error(f"--eps values must be finite and >= 0, got {args.eps}")
    return args


def sized_setting(settings: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The setting ``args.setting`` of ``settings`` with ``--set``, ``--seeds`` and ``--eps`` applied."""
    s = dict(settings[args.setting])
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or key not in s:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(s))}")
        try:
            s[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"--set {item!r}: {text!r} is not a Python literal") from None
    if args.seeds is not None:
        s["seeds"] = args.seeds
    if args.eps is not None:
        s["eps"] = args.eps
    return s


def downsample(ds: Dataset, factor: int) -> Dataset:
    """Images average-pooled by ``factor`` in height and width (stays in the data range [0, 1])."""
    if factor == 1:
        return ds
    n, h, w, c = ds.x.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the down-sampling factor {factor}")
    x = ds.x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    return Dataset(
        x=x, y=ds.y, num_classes=ds.num_classes, name=f"{ds.name}/{factor}", input_range=ds.input_range,
        normalization=ds.normalization,
    )  # fmt: skip


def fashion_subset(train_limit: int, test_limit: int, *, factor: int = 1) -> tuple[Dataset, Dataset]:
    """The first ``train_limit`` / ``test_limit`` Fashion-MNIST examples (offline copy), down-sampled."""
    train = load_dataset("fashion_mnist", "train", limit=train_limit)
    test = load_dataset("fashion_mnist", "test", limit=test_limit)
    return downsample(train, factor), downsample(test, factor)


def fit(
    config: TrainConfig, arch: Arch, train_ds: Dataset, *, progress: bool = True, desc: str | None = None
) -> tuple[LayerParams, dict[str, float]]:
    """Train ``arch`` on ``train_ds`` with ``config``; returns the final full params and a summary
    (seconds, final-window means of the logged training metrics). Raises on a non-finite loss."""
    params = initial_params(config, arch, train_ds.in_shape)
    trainer = make_trainer(config, arch, params, train_ds.input_range)
    state = trainer.init(params)
    key = jax.random.key(config.seed)
    per_epoch = num_batches(train_ds, config.batch_size)
    if per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the training set ({len(train_ds)} examples)")
    window: dict[str, list[float]] = {}
    start = time.time()
    step = 0
    with tqdm(total=config.steps, disable=not progress, desc=desc or config.name, dynamic_ncols=True) as bar:
        while step < config.steps:
            for xb, yb in batches(train_ds, config.batch_size, seed=config.seed, epoch=step // per_epoch):
                state, metrics = trainer.step(state, xb, yb, jax.random.fold_in(key, step))
                step += 1
                bar.update(1)
                if step > config.steps - max(config.steps // 10, 1):  # last 10 % of the run
                    for k, v in jax.device_get(metrics).items():
                        window.setdefault(k, []).append(float(v))
                if step >= config.steps:
                    break
    loss = window.get("loss", [0.0])
    if not all(math.isfinite(v) for v in loss):
        raise FloatingPointError(f"{desc or config.name}: non-finite training loss in the last steps: {loss}")
    kept = ("loss", "clean_acc", "cert_acc", "loss_at_mean", "clean_acc_at_mean", "cert_acc_at_mean")
    summary = {f"train_{k}": float(np.mean(v)) for k, v in window.items() if k in kept}
    summary["train_seconds"] = time.time() - start
    jax.block_until_ready(state.params)
    return state.full_params, summary


def save_run(run_dir: Path, config: TrainConfig, params: LayerParams) -> Path:
    """``params`` as a ``jaxcert.train`` run directory (config.json + one orbax checkpoint), for ``init_from``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    trainable, frozen = split_trainable(params)
    state = TrainState(trainable, frozen, jnp.zeros(()), jnp.asarray(config.steps, jnp.int32))
    checkpoints = Checkpoints(run_dir / "checkpoints", every=config.steps)
    checkpoints.save(state, {"config": config.to_dict()})
    checkpoints.close()
    return run_dir


def accuracies(
    arch: Arch,
    params: LayerParams,
    ds: Dataset,
    eps: float,
    relaxations: Sequence[str],
    *,
    pgd_steps: int = 20,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, float]:
    """Clean, PGD and certified accuracy per relaxation, plus ``cert_acc/any``: certified by at least one
    of ``relaxations`` (every bound is sound, so their union is a sound verifier tighter than each)."""
    per = evaluate_per_example(
        arch, params, ds, eps, relaxations=tuple(relaxations), pgd_steps=pgd_steps, seed=seed, batch_size=batch_size
    )
    out = {k: float(np.mean(v)) for k, v in per.items()}
    cert = [per[f"cert_acc/{r}"] for r in relaxations]
    if cert:
        out["cert_acc/any"] = float(np.mean(np.any(np.stack(cert), axis=0)))
    return out


def certify_accuracies(
    arch: Arch,
    params: LayerParams,
    ds: Dataset,
    eps: float,
    cascade: Sequence[str],
    *,
    pgd_steps: int = 5,
    pgd_restarts: int = 1,
    apgd_steps: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracies of ``params`` on all of ``ds`` by :func:`jaxcert.certify.certify_dataset`: attacks, then the
    relaxation ``cascade`` (each relaxation tried on the examples the previous ones left open).

    ``cert_acc/<r>``: certified by the cascade up to and including ``r``; ``cert_acc``: by the whole cascade
    (the strongest verifier of the run); ``robust_acc``: not falsified by any attack; plus ``certify_seconds``."""
    report = certify_dataset(
        arch, params, ds, eps, relaxations=tuple(cascade), pgd_steps=pgd_steps, pgd_restarts=pgd_restarts,
        apgd_steps=apgd_steps, seed=seed, progress=progress,
    )  # fmt: skip
    return {**report.accuracies(), "certify_seconds": report.seconds}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation."""
    return float(np.mean(values)), float(np.std(values))


def summarise(runs: Sequence[dict[str, Any]], group: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per distinct value of the ``group`` keys (in order of first appearance): those keys, ``seeds``
    (the number of runs) and, for each metric present, its mean over the runs and ``<metric>_std``."""
    out: list[dict[str, Any]] = []
    keys: list[tuple] = []
    for run in runs:
        k = tuple(run[g] for g in group)
        if k not in keys:
            keys.append(k)
    for k in keys:
        chosen = [r for r in runs if tuple(r[g] for g in group) == k]
        row: dict[str, Any] = dict(zip(group, k, strict=True)) | {"seeds": len(chosen)}
        for m in metrics:
            values = [r[m] for r in chosen if r.get(m) is not None]
            if values:
                row[m], row[f"{m}_std"] = mean_std(values)
        out.append(row)
    return out


def pm(row: dict[str, Any], key: str, percent: bool = False, digits: int = 3) -> str:
    """``mean ± std`` cell of a :func:`summarise` row (``-`` when missing)."""
    if key not in row:
        return "-"
    m, s = row[key], row[f"{key}_std"]
    return f"{100 * m:.1f} ± {100 * s:.1f}" if percent else f"{m:.{digits}g} ± {s:.2g}"


def paired_mean_se(differences: Sequence[float]) -> tuple[float, float]:
    """Mean d̄ and standard error s_d / √n of per-seed paired differences d_s = a_s − b_s (sample std,
    ddof = 1; one difference gives se = nan)."""
    d = np.asarray(differences, float)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return float(d.mean()), se


def compare(a: Sequence[float], b: Sequence[float], *, z: float = 2.0) -> dict[str, Any]:
    """Is mean(a) > mean(b)? ``diff`` = mean(a) − mean(b), ``se`` = sqrt(s_a²/n_a + s_b²/n_b) (sample
    variances; one run each gives se = nan) and the verdict: "reproduced" if diff > z·se, "not reproduced"
    if diff < −z·se, else "inconclusive"."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return {"diff": diff, "se": float("nan"), "verdict": "inconclusive (one seed)"}
    se = float(np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))
    verdict = "reproduced" if diff > z * se else "not reproduced" if diff < -z * se else "inconclusive"
    return {"diff": diff, "se": se, "verdict": verdict}


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: percentages for accuracies are the caller's business; floats get ``digits`` significant
    digits, ``None`` prints as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with ``columns`` = [(key, header)]; accuracy keys (``*acc*``, ``*err*``)
    print in percent."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for key, _ in columns:
            v = row.get(key)
            if isinstance(v, float) and ("acc" in key or "err" in key):
                cells.append(f"{100 * v:.1f}")
            else:
                cells.append(fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(
    out_dir: Path,
    name: str,
    settings: dict[str, Any],
    rows: list[dict[str, Any]],
    table: str,
    seconds: float,
    **extra: Any,
) -> Path:
    """Write ``<name>.json`` ({"experiment", "settings", "rows", "seconds", **extra}) and ``<name>.md``
    (the table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    record = {"experiment": name, "settings": settings, "rows": rows, "seconds": seconds, **extra}
    record["provenance"] = provenance()
    path.write_text(json.dumps(record, indent=2, default=_jsonable))
    (out_dir / f"{name}.md").write_text(table + "\n")
    return path


def write_partial(out_dir: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """Write the rows finished so far to ``<name>.partial.json`` (so an interrupted run leaves its numbers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.partial.json"
    path.write_text(json.dumps({"experiment": name, "rows": rows}, indent=2, default=_jsonable))
    return path


def read_partial(out_dir: Path, name: str) -> list[dict[str, Any]]:
    """The rows an interrupted run left in ``<name>.partial.json`` (:func:`write_partial`)."""
    path = out_dir / f"{name}.partial.json"
    if not path.is_file():
        raise FileNotFoundError(f"no partial results at {path}: run the experiment first (without --from-partial)")
    rows = json.loads(path.read_text())["rows"]
    if not rows:
        raise ValueError(f"{path} holds no finished run")
    return rows


def runs_of(
    args: argparse.Namespace, s: dict[str, Any], name: str, train_and_certify: Any
) -> tuple[list[dict[str, Any]], list[int]]:
    """``(runs, seeds)``: ``train_and_certify(s, seeds, args)`` over seeds ``seed … seed+N-1``, or with
    ``--from-partial`` the runs of an interrupted run (``s["eps"]`` and the seeds then those it finished)."""
    seeds = [args.seed + i for i in range(s["seeds"])]
    if not args.from_partial:
        return train_and_certify(s, seeds, args), seeds
    runs = read_partial(args.out, name)
    s["eps"] = list(dict.fromkeys(r["eps"] for r in runs))
    return runs, list(dict.fromkeys(r["seed"] for r in runs))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
