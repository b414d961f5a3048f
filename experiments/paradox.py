"""The paradox of certified training (Jovanović et al., 2022), small scale.

The same small MLP is trained on a Fashion-MNIST subset at ε = 0.1 with the certified loss of each of
IBP, hBox, DeepZ, CROWN and CROWN-IBP (β = 1) and the same recipe. For every trained net (on the test
subset) we report clean accuracy, certified accuracy under the training relaxation and under the tightest
affordable verifier ("best": an example counts as certified when any of IBP, hBox, DeepZ, CROWN,
CROWN-IBP proves it; all are sound), and on a fixed test batch, with the certified loss of the training relaxation:

    tightness       1/ρ, ρ = Σ (m(x) - lb_relax) / Σ (m(x) - lb_ref): how close the training relaxation's
                    margin lower bounds are to the reference (alpha-CROWN; 1 = as tight)
    jump / rel      largest neighbour step of L(θ + t d) on a 101-point and a 401-point grid of t ∈ [-T, T]
                    along a filter-normalised random direction d; a discontinuity keeps its absolute jump
                    and its relative jump (jump / median step) grows ~4× under the 4× refinement
    S_σ             perturbation sensitivity mean |L(θ + σz) - L(θ)| (→ 0 linearly for a continuous loss)
    ‖∇L‖, V, cos    gradient norm; loss variation and min gradient cosine along the step θ - c·η·∇L
                    (Lee et al., 2021)
    unstable        mean number of crossing ReLUs per example under IBP intermediate bounds.

    python experiments/paradox.py [--quick]
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracies, fashion_subset, fit, markdown_table, parse_args, write_partial, write_results

from jaxcert import analysis
from jaxcert.analysis.tightness import as_numpy
from jaxcert.nets.architectures import mlp
from jaxcert.train.configs import TrainConfig

NAME = "paradox"
RELAXATIONS = ("ibp", "hbox", "deepz", "crown", "crown-ibp")

SETTINGS = {
    "default": {
        "widths": (100, 100), "factor": 1, "train_limit": 5000, "test_limit": 500, "steps": 1200, "batch_size": 64,
        "analysis_batch": 64, "sweep_range": 0.05, "sens_samples": 16, "reference": "alpha-crown",
        "relaxations": RELAXATIONS, "grids": (101, 401), "landscape_points": 6,
    },
    "quick": {
        "widths": (16,), "factor": 4, "train_limit": 256, "test_limit": 64, "steps": 12, "batch_size": 32,
        "analysis_batch": 16, "sweep_range": 0.05, "sens_samples": 2, "reference": "crown",
        "relaxations": ("ibp", "crown"), "grids": (41, 161), "landscape_points": 3,
    },
}  # fmt: skip


def config_for(relaxation: str, s: dict, seed: int) -> TrainConfig:
    return TrainConfig(
        name=f"paradox-{relaxation}", method="certified", relaxation=relaxation, eps=0.1, steps=s["steps"],
        batch_size=s["batch_size"], lr=1e-3, warmup_frac=0.05, ramp_frac=0.5, kappa_final=0.0, beta_final=1.0,
        lr_decay_fracs=(0.8,), init="ibp", seed=seed, train_limit=s["train_limit"],
    )  # fmt: skip


def loss_analysis(arch, params, x, y, relaxation: str, s: dict, seed: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Tightness, continuity, sensitivity, landscape and unstable counts of the training loss at ``params``."""
    eps = 0.1
    options = {"beta": 1.0} if relaxation == "crown-ibp" else {}
    loss_fn = analysis.certified_loss_fn(arch, x, y, eps, relaxation=relaxation, **options)
    key = jax.random.key(seed + 1)
    tight = as_numpy(
        analysis.tightness(arch, params, x, y, eps, relaxation=relaxation, reference=s["reference"], options=options)
    )
    direction = analysis.random_direction(key, params)
    out: dict[str, float] = {"tightness": 1.0 / tight["slack_ratio"], "loss_ratio": tight["loss_ratio"]}
    for label, n in zip(("coarse", "fine"), s["grids"], strict=True):
        ts = jnp.linspace(-s["sweep_range"], s["sweep_range"], n)
        _, jump = analysis.sweep(loss_fn, params, direction, ts, batch_size=41)
        out[f"jump_{label}"] = float(jump.size)
        out[f"rel_jump_{label}"] = float(jump.relative)
    sens = analysis.perturbation_sensitivity(loss_fn, params, key, jnp.array([1e-3, 1e-2]), s["sens_samples"], 16)
    out["sens_1e-3"], out["sens_1e-2"] = (float(v) for v in sens)
    out["grad_norm"] = float(analysis.gradient_norm(loss_fn, params))
    land = analysis.gradient_step_landscape(loss_fn, params, 1e-2, n_points=s["landscape_points"])
    out["loss_variation"] = float(land.loss_variation)
    out["min_cosine"] = float(land.min_cosine)
    status = analysis.unstable_counts(arch, params, x, eps, relaxation="ibp")
    out["unstable_ibp"] = float(np.mean(np.sum(np.asarray(status.unstable), axis=0)))
    out["cert_loss"] = float(loss_fn(params))
    return out


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    s = SETTINGS["quick" if args.quick else "default"]
    start = time.time()
    train_ds, test_ds = fashion_subset(s["train_limit"], s["test_limit"], factor=s["factor"])
    arch = mlp(s["widths"], train_ds.num_classes, train_ds.normalization)
    xa, ya = jnp.asarray(test_ds.x[: s["analysis_batch"]]), jnp.asarray(test_ds.y[: s["analysis_batch"]])
    rows = []
    for relaxation in s["relaxations"]:
        config = config_for(relaxation, s, args.seed)
        params, summary = fit(config, arch, train_ds, progress=not args.no_progress, desc=relaxation)
        acc = accuracies(arch, params, test_ds, 0.1, s["relaxations"], seed=args.seed)
        row = {"relaxation": relaxation, **summary, **acc, "cert_acc/train": acc[f"cert_acc/{relaxation}"]}
        row |= loss_analysis(arch, params, xa, ya, relaxation, s, args.seed)
        rows.append(row)
        write_partial(args.out, NAME, rows)
        print(f"{relaxation}: clean {acc['clean_acc']:.3f} cert {row['cert_acc/train']:.3f}", flush=True)
    columns = [
        ("relaxation", "trained with"), ("clean_acc", "clean %"), ("pgd_acc", "PGD %"),
        ("cert_acc/train", "cert (own) %"), ("cert_acc/ibp", "cert IBP %"), ("cert_acc/crown", "cert CROWN %"),
        ("cert_acc/any", "cert best %"), ("tightness", "tightness"), ("jump_coarse", "jump (coarse)"),
        ("rel_jump_coarse", "rel jump (coarse)"), ("rel_jump_fine", "rel jump (4x finer)"), ("sens_1e-3", "S(σ=1e-3)"),
        ("sens_1e-2", "S(σ=1e-2)"), ("grad_norm", "‖∇L‖"), ("loss_variation", "V (Lee)"),
        ("min_cosine", "min cos (Lee)"), ("unstable_ibp", "unstable (IBP)"), ("train_seconds", "train s"),
    ]  # fmt: skip
    table = markdown_table(rows, columns)
    print(table)
    settings = {**s, "eps": 0.1, "dataset": "fashion_mnist", "verifiers": s["relaxations"]}
    settings["config"] = dataclasses.asdict(config_for("<relaxation>", s, args.seed))
    write_results(args.out, NAME, settings, rows, table, time.time() - start)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    run()
