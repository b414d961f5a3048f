"""PGPE step size and σ of the small-MLP GLS study, chosen on a validation split (not the test set).

PGPE (64 members, Adam on the mean, one absolute σ) trains the small MLP 196-32-32-10 of the earlier,
MLP-scale ``gls_vs_ibp.py`` (its results are in ``results/mlp/``) on the first 5000 Fashion-MNIST training
images, average-pooled to 14×14, with the certified loss of IBP, for every pair of Adam step size η and
search σ on a grid. Each net is scored by its IBP-certified accuracy at ε = 0.1 on
*validation* images: training images 5000…5999 of the official training split, disjoint from the
training subset and from the test set. IBP is the baseline of the comparison, so tuning on it does not
favour the tighter relaxations. The table is written to ``results/tune_pgpe.{json,md}``. (The PGPE recipe
used since, ClipUp with σ relative to each weight tensor, was chosen by ``pgpe_study.py``.)

    python experiments/tune_pgpe.py [--quick]
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracies, downsample, fit, markdown_table, parse_args, write_partial, write_results

from jaxcert.data import Dataset, load_dataset
from jaxcert.nets.architectures import mlp
from jaxcert.train.configs import TrainConfig

NAME = "tune_pgpe"
EPS = 0.1
SETTINGS = {
    "default": {"widths": (32, 32), "factor": 2, "train_limit": 5000, "batch_size": 64, "steps": 500,
                "population": 64},
    "quick": {"widths": (16,), "factor": 4, "train_limit": 256, "batch_size": 32, "steps": 10, "population": 8},
}  # fmt: skip
GRID = {
    "default": {"lr": (5e-4, 2e-3, 5e-3, 1e-2), "sigma": (0.002, 0.005, 0.01, 0.02), "validation": 1000},
    "quick": {"lr": (2e-3, 1e-2), "sigma": (0.005,), "validation": 64},
}


def train_validation_split(train_limit: int, validation: int, factor: int) -> tuple[Dataset, Dataset]:
    """The first ``train_limit`` training images and the next ``validation`` ones, down-sampled."""
    full = load_dataset("fashion_mnist", "train", limit=train_limit + validation)
    if len(full) < train_limit + validation:
        raise ValueError(f"need {train_limit + validation} training images, the data set has {len(full)}")
    train = dataclasses.replace(full, x=full.x[:train_limit], y=full.y[:train_limit])
    held_out = dataclasses.replace(full, x=full.x[train_limit:], y=full.y[train_limit:], name=f"{full.name}/val")
    return downsample(train, factor), downsample(held_out, factor)


def config_for(s: dict, lr: float, sigma: float, seed: int) -> TrainConfig:
    """PGPE with Adam (step size ``lr``) on the mean and absolute ``sigma``, on IBP's certified loss, with the
    recipe of the MLP study (5 % clean warm-up, ε ramped over half the run, step size ×0.1 at 80 %)."""
    return TrainConfig(
        name="pgpe-ibp", method="pgpe", relaxation="ibp", eps=EPS, steps=s["steps"], batch_size=s["batch_size"],
        lr=lr, warmup_frac=0.05, ramp_frac=0.5, kappa_final=0.0, beta_final=1.0, lr_decay_fracs=(0.8,), init="ibp",
        seed=seed, sigma=sigma, population=s["population"], train_limit=s["train_limit"], pgpe_optimizer="adam",
    )  # fmt: skip


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    mode = "quick" if args.quick else "default"
    s, grid = SETTINGS[mode], GRID[mode]
    start = time.time()
    train_ds, val_ds = train_validation_split(s["train_limit"], grid["validation"], s["factor"])
    arch = mlp(s["widths"], train_ds.num_classes, train_ds.normalization)
    rows = []
    for lr, sigma in itertools.product(grid["lr"], grid["sigma"]):
        config = config_for(s, lr, sigma, args.seed)
        params, summary = fit(config, arch, train_ds, progress=not args.no_progress, desc=f"lr={lr} σ={sigma}")
        acc = accuracies(arch, params, val_ds, EPS, ("ibp",), pgd_steps=5, seed=args.seed)
        rows.append({"lr": lr, "sigma": sigma, **summary, **acc})
        write_partial(args.out, NAME, rows)
        print(f"lr={lr} sigma={sigma}: val clean {acc['clean_acc']:.3f} cert {acc['cert_acc/ibp']:.3f}", flush=True)
    best = max(rows, key=lambda r: (r["cert_acc/ibp"], r["clean_acc"]))
    columns = [
        ("lr", "Adam η"), ("sigma", "σ"), ("clean_acc", "val clean %"), ("cert_acc/ibp", "val cert IBP %"),
        ("train_loss", "final train loss"), ("train_seconds", "train s"),
    ]  # fmt: skip
    table = markdown_table(rows, columns)
    print(table)
    print(f"best (validation certified accuracy): lr = {best['lr']}, sigma = {best['sigma']}")
    settings = {**s, **{k: list(v) if isinstance(v, tuple) else v for k, v in grid.items()}, "relaxation": "ibp"}
    settings["best"] = {"lr": best["lr"], "sigma": best["sigma"]}
    write_results(args.out, NAME, settings, rows, table, time.time() - start)
    return {"rows": rows, "best": best, "table": table}


if __name__ == "__main__":
    run()
