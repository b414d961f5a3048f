"""Adversarial vs certified training (De Bartolomeis et al., 2023), small scale.

PGD adversarial training (ℓ∞, on the ε-ball clipped to the data range) vs certified training with IBP and
CROWN-IBP (β = 1) on

- concentric spheres: d = 10, n = 500 training points (500 more for testing), radii 1.0 / 1.3, one hidden
  layer of 100 ReLUs, and
- a Fashion-MNIST subset with a two-hidden-layer MLP,

each at several ε. Reported on the test set: standard error 1 - clean accuracy, empirical robust error
1 - PGD accuracy (20-step PGD), certified error (IBP ∪ CROWN-IBP) and the mean number of unstable ReLUs
per example under IBP bounds at that ε. A standardly trained net (ε = 0 during training) is the
reference. The finding to check: PGD training has lower standard and robust error than certified
training, with a gap that grows with ε.

    python experiments/robust_vs_certified.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracies, fashion_subset, fit, markdown_table, parse_args, write_partial, write_results

from jaxcert.analysis import unstable_counts
from jaxcert.data import concentric_spheres, spheres_margin
from jaxcert.nets.architectures import mlp
from jaxcert.train.configs import TrainConfig

NAME = "robust_vs_certified"
METHODS = (("standard", None), ("pgd", None), ("certified", "ibp"), ("certified", "crown-ibp"))
VERIFIERS = ("ibp", "crown-ibp")
R_INNER, R_OUTER = 1.0, 1.3

SETTINGS = {
    "default": {
        "spheres": {"n": 500, "n_test": 500, "widths": (100,), "eps": (0.01, 0.02, 0.04), "steps": 2000,
                    "batch_size": 50, "lr": 3e-3},
        "fashion": {"train_limit": 3000, "test_limit": 500, "factor": 1, "widths": (100, 100),
                    "eps": (0.03, 0.1, 0.3), "steps": 300, "batch_size": 64, "lr": 1e-3},
        "attack_steps": 7, "eval_pgd_steps": 20,
    },
    "quick": {
        "spheres": {"n": 500, "n_test": 100, "widths": (100,), "eps": (0.02,), "steps": 30, "batch_size": 50,
                    "lr": 1e-3},
        "fashion": {"train_limit": 128, "test_limit": 32, "factor": 4, "widths": (16,), "eps": (0.1,), "steps": 6,
                    "batch_size": 32, "lr": 1e-3},
        "attack_steps": 2, "eval_pgd_steps": 3,
    },
}  # fmt: skip


def config_for(method: str, relaxation: str | None, eps: float, d: dict, s: dict, seed: int) -> TrainConfig:
    return TrainConfig(
        name=f"{method}-{relaxation or ''}-{eps}", method=method, relaxation=relaxation or "ibp", eps=eps,
        steps=d["steps"], batch_size=d["batch_size"], lr=d["lr"], warmup_frac=0.05, ramp_frac=0.5,
        kappa_final=0.0, beta_final=1.0, lr_decay_fracs=(0.8,), init="ibp" if method == "certified" else "default",
        attack_steps=s["attack_steps"], seed=seed,
    )  # fmt: skip


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    s = SETTINGS["quick" if args.quick else "default"]
    start = time.time()
    sp, fa = s["spheres"], s["fashion"]
    data = {
        "spheres": (
            concentric_spheres(sp["n"], 10, R_INNER, R_OUTER, seed=args.seed),
            concentric_spheres(sp["n_test"], 10, R_INNER, R_OUTER, seed=args.seed + 1000),
            sp,
        ),
        "fashion_mnist": (*fashion_subset(fa["train_limit"], fa["test_limit"], factor=fa["factor"]), fa),
    }
    rows = []
    for name, (train_ds, test_ds, d) in data.items():
        arch = mlp(d["widths"], train_ds.num_classes, train_ds.normalization)
        standard = None
        for eps in d["eps"]:
            for method, relaxation in METHODS:
                config = config_for(method, relaxation, eps, d, s, args.seed)
                label = method if relaxation is None else relaxation
                if method == "standard" and standard is not None:
                    params, summary = standard  # ε plays no role in standard training: train once
                else:
                    params, summary = fit(config, arch, train_ds, progress=not args.no_progress, desc=f"{name} {label}")
                    if method == "standard":
                        standard = (params, summary)
                acc = accuracies(arch, params, test_ds, eps, VERIFIERS, pgd_steps=s["eval_pgd_steps"], seed=args.seed)
                lo, hi = (float(v) for v in test_ds.input_range)
                status = unstable_counts(arch, params, jnp.asarray(test_ds.x[:256]), eps, lo=lo, hi=hi)
                row = {
                    "dataset": name, "eps": eps, "training": label, "std_err": 1 - acc["clean_acc"],
                    "pgd_err": 1 - acc["pgd_acc"], "cert_err": 1 - acc["cert_acc/any"],
                    "unstable": float(np.mean(np.sum(np.asarray(status.unstable), axis=0))), **summary,
                }  # fmt: skip
                rows.append(row)
                write_partial(args.out, NAME, rows)
                print(f"{name} ε={eps} {label}: std err {row['std_err']:.3f}, PGD err {row['pgd_err']:.3f}", flush=True)
    columns = [
        ("dataset", "data"), ("eps", "ε"), ("training", "training"), ("std_err", "standard err %"),
        ("pgd_err", "PGD robust err %"), ("cert_err", "certified err %"), ("unstable", "unstable ReLUs (IBP)"),
        ("train_seconds", "train s"),
    ]  # fmt: skip
    table = markdown_table(rows, columns)
    print(table)
    settings = {**s, "spheres_radii": (R_INNER, R_OUTER), "spheres_l2_margin": spheres_margin(R_INNER, R_OUTER)}
    settings |= {"norm": "linf", "methods": [m if r is None else r for m, r in METHODS], "verifiers": VERIFIERS}
    write_results(args.out, NAME, settings, rows, table, time.time() - start)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    run()
