"""The seed findings at converged budgets: every arm trained to its validation plateau, paired seeds.

Each arm is a :class:`~jaxcert.train.configs.TrainConfig` of ``python -m jaxcert.train`` (checkpointed,
resumable), trained for ``--epochs`` epochs on Fashion-MNIST minus a validation split (the last
``val_size`` training images), with the quickstart recipe scaled to the budget (IBP initialisation,
Adam at lr 1e-3, batch 128, 5 % clean warm-up, ε ramped linearly over 40 % of the steps, lr × 0.1 at
80 % and 90 %). Every ``val_every`` steps the validation split is evaluated (clean, PGD, IBP- and
CROWN-IBP-certified accuracy): the validation curve says where the arm plateaus
(``plateau_epoch``: the first validation point within 0.5 points of the best). The test split is used
once, at the end, by the cascade of ``python -m jaxcert.certify`` on all 10 000 images.

Arms (``--arms``): ``ibp`` (IBP certified loss), ``crown-ibp`` (CROWN-IBP with β = 1 throughout: the
CROWN-IBP bound alone), ``crown-ibp-fused`` (the same, loss fusion), and the state-of-the-art objectives
``sabr``, ``taps``, ``staps``, ``mtl-ibp``, ``cc-ibp``, ``exp-ibp`` (8 PGD steps inside the loss; λ, α and the
TAPS split at the library's defaults, not tuned yet).

Verdicts compare arms seed by seed (every arm of a seed shares its initialisation and data order): the
mean ± standard error of the per-seed differences, "A > B" when the mean exceeds 2 s.e.

Resumable: a run's row is saved to ``<out>/rows.json`` as soon as it is certified, and rerunning the
command skips finished rows and resumes unfinished runs from their checkpoints (``runs/campaign/…``).
Commands on different arms or seeds may run side by side with the same ``--out`` (rows are merged on
save); two commands must not train the same run.
The report (``<out>/campaign.md``, ``campaign.json``, ``campaign_val.png``) is rewritten after every run.

    python experiments/campaign.py --arms ibp --seeds 3 --epochs 20
    python experiments/campaign.py --quick --out /tmp/campaign     # seconds: tiny budget (tests)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, markdown_table

from jaxcert.certify import certify_dataset
from jaxcert.provenance import provenance
from jaxcert.runs import load_test_split
from jaxcert.train.configs import TrainConfig
from jaxcert.train.logging import read_metrics
from jaxcert.workflow import train

#: Arm name -> config fields over the recipe.
ARMS: dict[str, dict[str, Any]] = {
    "ibp": {"relaxation": "ibp"},
    "crown-ibp": {"relaxation": "crown-ibp", "beta_final": 1.0},
    "crown-ibp-fused": {"relaxation": "crown-ibp", "beta_final": 1.0, "loss_fusion": True},
    # the state-of-the-art objectives (jaxcert.train.methods) at the library's defaults, not yet tuned here
    **{m: {"method": m, "attack_steps": 8} for m in ("sabr", "taps", "staps", "mtl-ibp", "cc-ibp", "exp-ibp")},
}
#: Training images of Fashion-MNIST and the validation images held out of them.
TRAIN_IMAGES, VAL_SIZE = 60000, 5000
CASCADE = ("ibp", "crown-ibp", "crown", "alpha-crown")
METRICS = ("clean_acc", "pgd_acc", "robust_acc", "cert_acc", "cert_acc/ibp", "cert_acc/crown-ibp")
#: Settings: (train_limit, val_size, test_limit, batch_size, certify PGD steps / restarts / APGD steps).
SETTINGS = {
    "quick": {"train_limit": 640, "val_size": 128, "test_limit": 64, "batch_size": 64, "pgd": (3, 1, 0)},
    "default": {"train_limit": None, "val_size": VAL_SIZE, "test_limit": None, "batch_size": 128, "pgd": (20, 3, 100)},
}


def run_id(arm: str, eps: float, epochs: float, seed: int) -> str:
    return f"{arm}-eps{eps:g}-e{epochs:g}-s{seed}"


def arm_config(arm: str, eps: float, epochs: float, seed: int, setting: dict[str, Any], runs: Path) -> TrainConfig:
    """The run of ``arm`` at training and test radius ``eps``: ``epochs`` passes over the training images
    left after the validation split, validated 10 times (and at the end), checkpointed as often."""
    images = (setting["train_limit"] or TRAIN_IMAGES) - setting["val_size"]
    steps = max(10, round(epochs * images / setting["batch_size"]))
    every = max(1, steps // 10)
    return TrainConfig(
        name=f"campaign-{arm}", dataset="fashion_mnist", arch="cnn3", eps=eps, steps=steps,
        batch_size=setting["batch_size"], lr=1e-3, warmup_frac=0.05, ramp_frac=0.4, seed=seed,
        train_limit=setting["train_limit"], val_size=setting["val_size"], val_every=every, test_limit=None,
        checkpoint_every=every, out=str(runs / run_id(arm, eps, epochs, seed)), **ARMS[arm],
    )  # fmt: skip


def plateau(records: list[dict[str, Any]], key: str = "val_cert_acc", tol: float = 0.005) -> dict[str, Any]:
    """The validation curve of ``key``: its best value, the first epoch within ``tol`` of it, and the gain
    over the last third of the run (≈ 0: plateaued)."""
    curve = [(r["step"], r["epoch"], r[key]) for r in records if key in r]
    if not curve:
        return {}
    best = max(v for _, _, v in curve)
    first = next(e for _, e, v in curve if v >= best - tol)
    last_third = [v for s, _, v in curve if s >= curve[-1][0] * 2 / 3]
    return {"val_cert_acc_best": best, "val_cert_acc_final": curve[-1][2], "plateau_epoch": first,
            "val_cert_acc_gain": last_third[-1] - last_third[0], "val_curve": curve}  # fmt: skip


def paired(rows: list[dict[str, Any]], a: str, b: str, eps: float, metric: str = "cert_acc") -> dict[str, Any] | None:
    """Mean ± standard error of ``metric(a) − metric(b)`` over the seeds both arms finished at ``eps``."""
    by = {(r["arm"], r["seed"]): r[metric] for r in rows if r["eps"] == eps}
    seeds = sorted(s for arm, s in by if arm == a and (b, s) in by)
    if not seeds:
        return None
    d = np.array([by[(a, s)] - by[(b, s)] for s in seeds])
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
    mean = float(d.mean())
    if d.size < 3:
        verdict = f"not enough seeds ({d.size})"
    else:
        verdict = f"{a} > {b}" if mean > 2 * se else f"{b} > {a}" if mean < -2 * se else "no difference shown"
    return {"a": a, "b": b, "eps": eps, "seeds": seeds, "diff": mean, "se": se, "verdict": verdict}


def report(rows: list[dict[str, Any]], out: Path) -> str:
    """Rewrite ``campaign.md`` / ``campaign.json`` / ``campaign_val.png`` from the finished rows."""
    groups: dict[tuple[str, float, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["eps"], r["epochs"]), []).append(r)
    summary = []
    for (arm, eps, epochs), runs in groups.items():
        row: dict[str, Any] = {"arm": arm, "eps": eps, "epochs": epochs, "seeds": len(runs)}
        for m in (*METRICS, "val_cert_acc_best", "plateau_epoch", "val_cert_acc_gain", "train_seconds"):
            values = [r[m] for r in runs if r.get(m) is not None]
            if values:
                row[m] = float(np.mean(values))
                row[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary.append(row)
    columns = [("arm", "arm"), ("eps", "ε"), ("epochs", "epochs"), ("seeds", "seeds"), ("clean_acc", "clean %"),
               ("pgd_acc", "PGD %"), ("cert_acc/ibp", "cert IBP %"), ("cert_acc", "cert (cascade) %"),
               ("val_cert_acc_best", "best val cert %"), ("plateau_epoch", "plateau epoch"),
               ("val_cert_acc_gain", "val cert gain, last third"), ("train_seconds", "train s")]  # fmt: skip
    lines = ["# Campaign: arms at converged budgets (CNN3, Fashion-MNIST)", "",
             "Means over seeds (± sample std in campaign.json); test split used once, certified by "
             f"{' → '.join(CASCADE)} after PGD and APGD-CE.", "", markdown_table(summary, columns), ""]  # fmt: skip
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    comparisons = [c for eps in sorted({r["eps"] for r in rows}) for a in arms[1:]
                   if (c := paired(rows, a, arms[0], eps)) is not None]  # fmt: skip
    if comparisons:
        lines += ["| paired per seed | ε | seeds | Δ cert % (mean ± s.e.) | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {c['a']} − {c['b']} | {c['eps']:g} | {len(c['seeds'])} | {100 * c['diff']:+.2f} ± "
                  f"{100 * c['se']:.2f} | {c['verdict']} |" for c in comparisons]  # fmt: skip
    lines += ["", "Per run:", "", markdown_table(rows, [("run", "run"), *columns[4:]])]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "campaign.md").write_text(text)
    record = {"summary": summary, "paired": comparisons, "rows": rows, "provenance": provenance()}
    (out / "campaign.json").write_text(json.dumps(record, indent=2))
    _plot(rows, out / "campaign_val.png")
    return text


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours: dict[str, Any] = {}
    for r in rows:
        if not r.get("val_curve"):
            continue
        colour = colours.setdefault(f"{r['arm']} ε={r['eps']:g}", f"C{len(colours)}")
        _, epochs, values = zip(*r["val_curve"], strict=True)
        label = (
            f"{r['arm']} ε={r['eps']:g}" if r["seed"] == min(q["seed"] for q in rows if q["arm"] == r["arm"]) else None
        )
        ax.plot(np.asarray(epochs) + 1, 100 * np.asarray(values), color=colour, alpha=0.8, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation certified accuracy % (IBP or CROWN-IBP)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_one(arm: str, eps: float, epochs: float, seed: int, setting: dict[str, Any], runs: Path,
            progress: bool) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) one run, then certify it once on the test split."""
    config = arm_config(arm, eps, epochs, seed, setting, runs)
    began = time.time()
    result = train(config, resume=True, progress=progress, evaluate=False)
    train_wall = time.time() - began
    records = read_metrics(Path(config.out) / "metrics.jsonl")
    timed = [r["time"] for r in records if "time" in r]
    test = load_test_split(config, limit=setting["test_limit"])
    steps, restarts, apgd = setting["pgd"]
    cert = certify_dataset(
        result["arch"], result["state"].full_params, test, eps, relaxations=CASCADE, pgd_steps=steps,
        pgd_restarts=restarts, apgd_steps=apgd, seed=seed, progress=progress,
    )  # fmt: skip
    return {
        "run": run_id(arm, eps, epochs, seed), "arm": arm, "eps": eps, "epochs": epochs, "seed": seed,
        "steps": config.steps, "test_examples": cert.n, **cert.accuracies(), "certify_seconds": cert.seconds,
        "train_seconds": timed[-1] if timed else train_wall, **plateau(records),
    }  # fmt: skip


def save_row(rows_path: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Add ``row`` to the rows saved at ``rows_path`` (read again first, so that commands running side by side
    on other arms or seeds keep each other's rows; a row of the same run is replaced) and return them all."""
    saved = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    rows = [r for r in saved if r["run"] != row["run"]] + [row]
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = rows_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2))
    tmp.replace(rows_path)  # atomic: a reader never sees half a file
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="ibp", help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--eps", default="0.1", help="comma list of radii (training = test radius)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="tiny budget and data (tests)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "campaign")
    p.add_argument("--runs", type=Path, default=Path("runs/campaign"), help="run folders (checkpoints)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    try:
        args.eps = [float(e) for e in args.eps.split(",")]
    except ValueError:
        p.error(f"--eps must be comma-separated numbers, got {args.eps!r}")
    if args.seeds < 1 or args.epochs <= 0:
        p.error("--seeds must be >= 1 and --epochs > 0")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    setting = SETTINGS["quick" if args.quick else "default"]
    rows_path = args.out / "rows.json"
    rows: list[dict[str, Any]] = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    done = {r["run"] for r in rows}
    text = ""
    for seed in range(args.seed, args.seed + args.seeds):  # seed-major: paired rows arrive together
        for eps in args.eps:
            for arm in args.arms:
                if run_id(arm, eps, args.epochs, seed) in done:
                    continue
                began = time.time()
                row = run_one(arm, eps, args.epochs, seed, setting, args.runs, not args.no_progress)
                row["wall_seconds"] = time.time() - began
                rows = save_row(rows_path, row)
                text = report(rows, args.out)
                print(f"{row['run']}: cert {100 * row['cert_acc']:.2f}% (saved to {rows_path})", flush=True)
    if rows and not text:  # nothing new was run: the report of the saved rows
        text = report(rows, args.out)
    print(text)
    return text


if __name__ == "__main__":
    main()
