"""What makes PGPE (zeroth-order GLS) train: mean optimiser, σ, population, warm start.

The small MLP of the MLP-scale GLS study (196-32-32-10 on 14×14 average-pooled Fashion-MNIST, IBP
initialisation, the first 5000 training images) is trained on the certified loss of IBP at ε = 0.1 by

- gradient descent (the reference, and the source of the warm starts),
- PGPE with the old recipe (Adam on the mean, one absolute σ for every weight, 64 members),
- PGPE with ClipUp on the mean (Toklu et al., 2020), with absolute or leaf-relative σ
  (σ_leaf = σ_rel · std of the leaf at init), 64 → 4096 members (large ones evaluated ``member_chunk``
  members at a time),
- PGPE warm-started from the gradient-trained net of the same seed (``init_from``; ε at its final value
  from the first generation instead of the ramp),

every PGPE run for the same number of generations. Each net is scored on *validation* images (training
images 5000…5999, disjoint from the training subset and the test set): IBP-certified and clean accuracy
at ε = 0.1; plus the training loss and certified accuracy **at the mean μ** (the returned net, mean over
the last 10 % of the generations). Mean ± std over the seeds; per-seed rows in the JSON.

    python experiments/pgpe_study.py [--quick] [--rows SUBSTRING]

``--rows`` runs only the rows whose label contains SUBSTRING (the gradient row is kept when a warm-start
row needs it), e.g. ``--rows "N 4096"`` for the costliest row alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracies, fit, markdown_table, mean_std, parse_args, pm, save_run, write_partial, write_results
from tune_pgpe import train_validation_split

from jaxcert.nets.architectures import mlp
from jaxcert.train.configs import TrainConfig

NAME = "pgpe_study"
EPS = 0.1

#: One row of the study: a label and the TrainConfig fields it changes; ``warm``: start from the gradient
#: run of the same seed; ``seeds``: fewer seeds for the costliest rows.
ROWS = {
    "default": (
        {"label": "gradient IBP", "method": "certified", "lr": 1e-3},
        {"label": "Adam, σ 0.005, N 64 (old)", "pgpe_optimizer": "adam", "lr": 5e-3, "sigma": 0.005, "population": 64},
        {"label": "ClipUp, σ_rel 0.1, N 64", "sigma_rel": 0.1, "population": 64},
        {"label": "ClipUp, σ_rel 0.1, N 512", "sigma_rel": 0.1, "population": 512, "member_chunk": 128, "seeds": 1},
        {"label": "ClipUp, σ_rel 0.1, N 4096", "sigma_rel": 0.1, "population": 4096, "member_chunk": 512, "seeds": 1},
        {"label": "warm: Adam, σ 0.005, N 64", "pgpe_optimizer": "adam", "lr": 5e-3, "sigma": 0.005, "population": 64,
         "warm": True},
        {"label": "warm: ClipUp 0.01, σ 0.005, N 64", "lr": 0.01, "max_speed": 0.02, "sigma": 0.005, "population": 64,
         "warm": True},
        {"label": "warm: ClipUp 0.01, σ_rel 0.1, N 64", "lr": 0.01, "max_speed": 0.02, "sigma_rel": 0.1,
         "population": 64, "warm": True},
    ),
    "quick": (
        {"label": "gradient IBP", "method": "certified", "lr": 1e-3},
        {"label": "ClipUp, σ_rel 0.1, N 8", "sigma_rel": 0.1, "population": 8, "member_chunk": 4},
        {"label": "warm: ClipUp, σ_rel 0.1, N 8", "sigma_rel": 0.1, "population": 8, "warm": True},
    ),
}  # fmt: skip

SETTINGS = {
    "default": {"widths": (32, 32), "factor": 2, "train_limit": 5000, "validation": 1000, "batch_size": 64,
                "steps": 300, "seeds": 3, "clipup_lr": 0.05, "max_speed": 0.1},
    "quick": {"widths": (16,), "factor": 4, "train_limit": 256, "validation": 64, "batch_size": 32,
              "steps": 4, "seeds": 1, "clipup_lr": 0.05, "max_speed": 0.1},
}  # fmt: skip


def config_for(row: dict[str, Any], s: dict[str, Any], seed: int, init_from: str | None = None) -> TrainConfig:
    """The TrainConfig of ``row``: PGPE with ClipUp (``clipup_lr``, ``max_speed``) unless the row says
    otherwise; the recipe of the MLP study (5 % clean warm-up, ε ramped over half the run), or ε = 0.1
    from the start for a warm start."""
    fields = {k: v for k, v in row.items() if k not in ("label", "warm", "seeds")}
    warm = {"init_from": init_from, "warmup_frac": 0.0, "ramp_frac": 0.0} if init_from else {}
    base = TrainConfig(
        name=row["label"], method="pgpe", relaxation="ibp", eps=EPS, steps=s["steps"], batch_size=s["batch_size"],
        lr=s["clipup_lr"], max_speed=s["max_speed"], pgpe_optimizer="clipup", warmup_frac=0.05, ramp_frac=0.5,
        kappa_final=0.0, lr_decay_fracs=(0.8,), init="ibp", seed=seed, train_limit=s["train_limit"],
    )  # fmt: skip
    return dataclasses.replace(base, **{**fields, **warm})


def summarise(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over the seeds of the scores of one row."""
    out: dict[str, Any] = {"label": label, "seeds": len(runs)}
    for key in ("val_cert_acc", "val_clean_acc", "train_loss_at_mean", "train_cert_acc_at_mean", "train_seconds"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key], out[f"{key}_std"] = mean_std(values)
    return out


def select_rows(rows: tuple[dict[str, Any], ...], substring: str | None) -> tuple[dict[str, Any], ...]:
    """The rows whose label contains ``substring`` (all if None), with the gradient row if a warm row needs it."""
    if substring is None:
        return rows
    chosen = [r for r in rows if substring in r["label"]]
    if not chosen:
        raise ValueError(f"no row label contains {substring!r}; labels: {[r['label'] for r in rows]}")
    if any(r.get("warm") for r in chosen) and not any(r.get("method") == "certified" for r in chosen):
        chosen.insert(0, next(r for r in rows if r.get("method") == "certified"))
    return tuple(chosen)


def run(argv: list[str] | None = None) -> dict:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--rows", help="only the rows whose label contains this substring")
    extra, rest = pre.parse_known_args(argv)
    args = parse_args(__doc__.splitlines()[0], rest)
    mode = "quick" if args.quick else "default"
    s, rows_spec = SETTINGS[mode], select_rows(ROWS[mode], extra.rows)
    start = time.time()
    train_ds, val_ds = train_validation_split(s["train_limit"], s["validation"], s["factor"])
    arch = mlp(s["widths"], train_ds.num_classes, train_ds.normalization)
    seeds = [args.seed + i for i in range(s["seeds"])]
    runs: list[dict[str, Any]] = []
    sources: dict[int, Path] = {}
    with tempfile.TemporaryDirectory(prefix="pgpe_study_") as tmp:
        for row in rows_spec:
            for seed in seeds[: row.get("seeds", len(seeds))]:
                if row.get("warm") and seed not in sources:
                    raise ValueError("a warm-start row needs the gradient row (method 'certified') before it")
                config = config_for(row, s, seed, str(sources[seed]) if row.get("warm") else None)
                params, summary = fit(config, arch, train_ds, progress=not args.no_progress, desc=config.name)
                if config.method == "certified":
                    sources[seed] = save_run(Path(tmp) / f"gradient-{seed}", config, params)
                    summary |= {"train_loss_at_mean": summary.get("train_loss"),
                                "train_cert_acc_at_mean": summary.get("train_cert_acc")}  # fmt: skip
                acc = accuracies(arch, params, val_ds, EPS, ("ibp",), pgd_steps=5, seed=seed)
                record = {"label": row["label"], "seed": seed, **summary}
                record |= {"val_cert_acc": acc["cert_acc/ibp"], "val_clean_acc": acc["clean_acc"]}
                runs.append(record)
                write_partial(args.out, NAME, runs)
                print(
                    f"{row['label']} seed {seed}: val cert {record['val_cert_acc']:.3f} clean "
                    f"{record['val_clean_acc']:.3f}, train loss at mean {record['train_loss_at_mean']:.3f} "
                    f"({record['train_seconds']:.1f} s)",
                    flush=True,
                )
    summary_rows = [summarise(row["label"], [r for r in runs if r["label"] == row["label"]]) for row in rows_spec]
    cells = [
        {"label": r["label"], "seeds": r["seeds"], "cert": pm(r, "val_cert_acc", True),
         "clean": pm(r, "val_clean_acc", True), "loss": pm(r, "train_loss_at_mean"),
         "train_cert": pm(r, "train_cert_acc_at_mean", True), "seconds": pm(r, "train_seconds", digits=3)}
        for r in summary_rows
    ]  # fmt: skip
    columns = [
        ("label", "run"), ("seeds", "seeds"), ("cert", "val cert IBP %"), ("clean", "val clean %"),
        ("loss", "train loss at μ"), ("train_cert", "train cert at μ %"), ("seconds", "train s"),
    ]  # fmt: skip
    table = markdown_table(cells, columns)
    print(table)
    settings = {**s, "eps": EPS, "relaxation": "ibp", "rows": [dict(r) for r in rows_spec], "seeds": seeds}
    write_results(args.out, NAME, settings, runs, table, time.time() - start)
    record = json.loads((args.out / f"{NAME}.json").read_text())
    record["summary"] = summary_rows
    (args.out / f"{NAME}.json").write_text(json.dumps(record, indent=2))
    return {"rows": runs, "summary": summary_rows, "table": table}


if __name__ == "__main__":
    run()
