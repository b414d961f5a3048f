"""Gaussian Loss Smoothing (GLS) with tight relaxations vs plain IBP training, small scale.

One small MLP on down-sampled (14×14) Fashion-MNIST at ε = 0.1 is trained

- with plain gradient descent on the IBP certified loss (the usual certified training), and
- with GLS, L_σ(θ) = E_z L_cert(θ + σz), by RGS (mean of k sampled gradients, Adam) and by PGPE
  (antithetic evolution strategy with centred ranks) on the certified loss of IBP, CROWN/DeepPoly and
  CROWN-IBP (β = 1).

RGS and gradient IBP use the same recipe (clean warm-up, ε and κ ramped). PGPE uses the recipe chosen by
``pgpe_study.py`` on a validation split: warm-started from the gradient-IBP net of the first row
(``init_from``; ε at 0.1 from the first generation), ClipUp on the mean, σ relative to each leaf's scale.
Reported on the test subset: clean accuracy, PGD accuracy and certified accuracy under the training
relaxation and under the best of the verifiers; the final training loss is the loss at the returned
weights (at the mean μ for the GLS rows, not the population mean).

    python experiments/gls_vs_ibp.py [--quick]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracies, fashion_subset, fit, markdown_table, parse_args, save_run, write_partial, write_results

from jaxcert.nets.architectures import mlp
from jaxcert.train.configs import TrainConfig

NAME = "gls_vs_ibp"
EPS = 0.1
VERIFIERS = ("ibp", "crown", "crown-ibp")

SETTINGS = {
    "default": {
        "widths": (32, 32), "factor": 2, "train_limit": 5000, "test_limit": 500, "batch_size": 64,
        "steps": 500, "rgs_samples": 4, "rgs_sigma": 0.01, "pgpe_population": 64, "pgpe_sigma": 0.005,
        # the PGPE recipe chosen by pgpe_study.py on a validation split (ClipUp step size and max speed)
        "pgpe_optimizer": "clipup", "pgpe_lr": 0.01, "pgpe_max_speed": 0.02, "pgpe_sigma_rel": 0.1,
        "pgpe_warm": True,
        "runs": (("certified", "ibp"), ("rgs", "ibp"), ("rgs", "crown"), ("rgs", "crown-ibp"),
                 ("pgpe", "ibp"), ("pgpe", "crown"), ("pgpe", "crown-ibp")),
    },
    "quick": {
        "widths": (16,), "factor": 4, "train_limit": 256, "test_limit": 64, "batch_size": 32,
        "steps": 10, "rgs_samples": 2, "rgs_sigma": 0.01, "pgpe_population": 8, "pgpe_sigma": 0.005,
        "pgpe_optimizer": "clipup", "pgpe_lr": 0.01, "pgpe_max_speed": 0.02, "pgpe_sigma_rel": 0.1,
        "pgpe_warm": True,
        "runs": (("certified", "ibp"), ("rgs", "crown"), ("pgpe", "crown")),
    },
}  # fmt: skip


def config_for(method: str, relaxation: str, s: dict, seed: int, init_from: str | None = None) -> TrainConfig:
    """The run's config; PGPE takes ``pgpe_*`` of ``s``; a warm start (``init_from``) has ε at 0.1 throughout."""
    config = TrainConfig(
        name=f"{method}-{relaxation}", method=method, relaxation=relaxation, eps=EPS, steps=s["steps"],
        batch_size=s["batch_size"], lr=s["pgpe_lr"] if method == "pgpe" else 1e-3, warmup_frac=0.05,
        ramp_frac=0.5, kappa_final=0.0, beta_final=1.0, lr_decay_fracs=(0.8,), init="ibp", seed=seed,
        sigma=s["pgpe_sigma"] if method == "pgpe" else s["rgs_sigma"], samples=s["rgs_samples"],
        population=s["pgpe_population"], train_limit=s["train_limit"],
    )  # fmt: skip
    if method == "pgpe":
        config = dataclasses.replace(
            config, pgpe_optimizer=s.get("pgpe_optimizer", "adam"), max_speed=s.get("pgpe_max_speed", 0.0),
            sigma_rel=s.get("pgpe_sigma_rel", 0.0),
        )  # fmt: skip
    if init_from:
        config = dataclasses.replace(config, init_from=init_from, warmup_frac=0.0, ramp_frac=0.0)
    return config


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    s = SETTINGS["quick" if args.quick else "default"]
    start = time.time()
    train_ds, test_ds = fashion_subset(s["train_limit"], s["test_limit"], factor=s["factor"])
    arch = mlp(s["widths"], train_ds.num_classes, train_ds.normalization)
    rows = []
    tmp = tempfile.TemporaryDirectory(prefix="gls_vs_ibp_")
    source = None  # the gradient-IBP run, PGPE's warm start
    for method, relaxation in s["runs"]:
        warm = method == "pgpe" and s.get("pgpe_warm", False)
        if warm and source is None:
            raise ValueError("the PGPE warm start needs the ('certified', 'ibp') run before the PGPE runs")
        config = config_for(method, relaxation, s, args.seed, init_from=str(source) if warm else None)
        params, summary = fit(config, arch, train_ds, progress=not args.no_progress, desc=config.name)
        if (method, relaxation) == ("certified", "ibp"):
            source = save_run(Path(tmp.name) / "certified-ibp", config, params)
        summary["train_loss"] = summary.get("train_loss_at_mean", summary["train_loss"])  # the returned net's loss
        acc = accuracies(arch, params, test_ds, EPS, VERIFIERS, seed=args.seed)
        row = {"method": method, "relaxation": relaxation, **summary, **acc}
        row["cert_acc/train"] = acc[f"cert_acc/{relaxation}"]
        rows.append(row)
        write_partial(args.out, NAME, rows)
        print(f"{config.name}: clean {acc['clean_acc']:.3f} cert {row['cert_acc/train']:.3f}", flush=True)
    columns = [
        ("method", "training"), ("relaxation", "relaxation"), ("clean_acc", "clean %"), ("pgd_acc", "PGD %"),
        ("cert_acc/train", "cert (own) %"), ("cert_acc/ibp", "cert IBP %"), ("cert_acc/crown", "cert CROWN %"),
        ("cert_acc/any", "cert best %"), ("train_loss", "final train loss"), ("train_seconds", "train s"),
    ]  # fmt: skip
    tmp.cleanup()
    table = markdown_table(rows, columns)
    print(table)
    settings = {**s, "eps": EPS, "dataset": "fashion_mnist (14x14 average-pooled)", "verifiers": VERIFIERS}
    settings["example_config"] = dataclasses.asdict(config_for("pgpe", "crown", s, args.seed, str(source)))
    write_results(args.out, NAME, settings, rows, table, time.time() - start)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    run()
