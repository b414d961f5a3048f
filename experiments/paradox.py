"""The paradox of certified training (Jovanović et al., 2022) on CNN3, several seeds and radii.

CNN3 (Conv(16,5,s2,p2)-ReLU-Conv(32,4,s2,p1)-ReLU-Linear(10)) is trained on Fashion-MNIST (28×28) with
the certified loss of each relaxation (IBP, CROWN-IBP with β = 1, CROWN/DeepPoly; hBox and DeepZ in
``--full``) and one recipe (IBP initialisation, 5 % clean warm-up, ε and κ ramped over half the steps,
Adam, learning rate ×0.1 at 80 %), for every seed and training radius ε. Each trained net is certified
on the **whole test set** at its training ε by the cascade of ``python -m jaxcert.certify`` (PGD, then
IBP → CROWN-IBP → CROWN [→ alpha-CROWN with optimised intermediate slopes in ``--full``], each relaxation
tried only on the examples the previous ones left open): ``cert_acc`` is the strongest verifier of the
run, ``cert_acc/ibp`` what IBP alone proves. On a fixed batch of test images, with the training
relaxation's certified loss:

    tightness       1/ρ, ρ = Σ (m(x) - lb_relax) / Σ (m(x) - lb_ref): how close the training relaxation's
                    margin lower bounds are to the reference verifier's (1 = as tight)
    jump / rel      (``--full``) largest neighbour step of L(θ + t d) on two grids of t ∈ [-T, T] along a
                    filter-normalised random direction d (a discontinuity keeps its absolute jump; its
                    relative jump grows ~4× under the 4× refinement)
    S_σ             perturbation sensitivity mean |L(θ + σz) - L(θ)| (→ 0 linearly for a continuous loss)
    ‖∇L‖, V, cos    gradient norm; loss variation and min gradient cosine along the step θ - c·η·∇L
                    (Lee et al., 2021)
    unstable        mean number of crossing ReLUs per example under IBP intermediate bounds.

Mean ± std over the seeds per (relaxation, ε); the per-seed runs are in the JSON (``rows``), with the
verdicts of the seed finding ("IBP-trained nets certify more than CROWN-trained ones") per ε.

    python experiments/paradox.py [--quick | --full] [--seeds N] [--eps 0.1,0.2]

The default fits a 2-core CPU in under an hour (short training: the nets are far from converged);
``--full`` is sized for an accelerator.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    certify_accuracies,
    compare,
    fashion_subset,
    fit,
    markdown_table,
    parse_args,
    pm,
    runs_of,
    sized_setting,
    summarise,
    write_partial,
    write_results,
)

from jaxcert import analysis
from jaxcert.analysis.tightness import as_numpy
from jaxcert.nets.architectures import cnn3
from jaxcert.train.configs import TrainConfig

NAME = "paradox"

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        "train_limit": 512, "test_limit": 48, "steps": 4, "batch_size": 16, "eps": (0.1,), "seeds": 1,
        "relaxations": ("ibp", "crown"), "cascade": ("ibp", "crown"), "pgd_steps": 2, "pgd_restarts": 1,
        "apgd_steps": 0, "analysis_batch": 8, "reference": "crown", "grids": (), "sweep_range": 0.05,
        "sens_samples": 2, "landscape_points": 2, "reg_weight": 0.0, "loss_fusion": False,
    },
    "default": {
        "train_limit": None, "test_limit": None, "steps": 160, "batch_size": 32, "eps": (0.1, 0.2), "seeds": 3,
        "relaxations": ("ibp", "crown-ibp", "crown"), "cascade": ("ibp", "crown-ibp", "crown"), "pgd_steps": 5,
        "pgd_restarts": 1, "apgd_steps": 0, "analysis_batch": 32, "reference": "alpha-crown", "grids": (),
        "sweep_range": 0.05, "sens_samples": 4, "landscape_points": 4, "reg_weight": 0.0, "loss_fusion": False,
    },
    "full": {
        "train_limit": None, "test_limit": None, "steps": 20000, "batch_size": 128, "eps": (0.1, 0.3), "seeds": 3,
        "relaxations": ("ibp", "hbox", "deepz", "crown-ibp", "crown"),
        "cascade": ("ibp", "crown-ibp", "crown", "alpha-crown", "alpha-crown-full"),
        "pgd_steps": 20, "pgd_restarts": 3,
        "apgd_steps": 100, "analysis_batch": 128, "reference": "alpha-crown-full", "grids": (101, 401),
        "sweep_range": 0.05, "sens_samples": 16, "landscape_points": 6, "reg_weight": 0.0, "loss_fusion": False,
    },
}  # fmt: skip

METRICS = (
    "clean_acc", "pgd_acc", "robust_acc", "cert_acc", "cert_acc/ibp", "cert_acc/crown-ibp", "cert_acc/crown",
    "tightness", "jump_coarse", "rel_jump_coarse", "rel_jump_fine", "sens_1e-3", "sens_1e-2", "grad_norm",
    "loss_variation", "min_cosine", "unstable_ibp", "cert_loss", "train_seconds", "certify_seconds",
)  # fmt: skip


def config_for(relaxation: str, eps: float, s: dict, seed: int) -> TrainConfig:
    """The one recipe every relaxation is trained with (``loss_fusion`` applies to the CROWN-IBP runs)."""
    return TrainConfig(
        name=f"paradox-{relaxation}-eps{eps:g}", arch="cnn3", method="certified", relaxation=relaxation, eps=eps,
        steps=s["steps"], batch_size=s["batch_size"], lr=1e-3, warmup_frac=0.05, ramp_frac=0.5, kappa_final=0.0,
        beta_final=1.0, lr_decay_fracs=(0.8,), init="ibp", seed=seed, train_limit=s["train_limit"],
        reg_weight=s["reg_weight"], loss_fusion=s["loss_fusion"] and relaxation == "crown-ibp",
    )  # fmt: skip


def loss_analysis(arch, params, x, y, relaxation: str, eps: float, s: dict, seed: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Tightness, continuity, sensitivity, landscape and unstable counts of the training loss at ``params``."""
    options = {"beta": 1.0} if relaxation == "crown-ibp" else {}
    loss_fn = analysis.certified_loss_fn(arch, x, y, eps, relaxation=relaxation, **options)
    key = jax.random.key(seed + 1)
    tight = as_numpy(
        analysis.tightness(arch, params, x, y, eps, relaxation=relaxation, reference=s["reference"], options=options)
    )
    out: dict[str, float] = {"tightness": 1.0 / tight["slack_ratio"], "loss_ratio": tight["loss_ratio"]}
    if s["grids"]:
        direction = analysis.random_direction(key, params)
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


def findings(runs: list[dict[str, Any]], epsilons: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per ε: does IBP training certify more than CROWN training (and than CROWN-IBP), over the seeds?"""
    out = []
    for eps in epsilons:
        by = {r["relaxation"]: [] for r in runs if r["eps"] == eps}
        for r in runs:
            if r["eps"] == eps:
                by[r["relaxation"]].append(r["cert_acc"])
        for other in ("crown", "crown-ibp", "deepz", "hbox"):
            if "ibp" in by and other in by:
                out.append({"eps": eps, "claim": f"cert(IBP-trained) > cert({other}-trained)",
                            **compare(by["ibp"], by[other])})  # fmt: skip
    return out


def train_and_certify(s: dict[str, Any], seeds: list[int], args: Any) -> list[dict[str, Any]]:
    """One run per (ε, seed, relaxation): train, certify the test set, analyse the loss; the rows so far are
    saved after each run (``<name>.partial.json``)."""
    train_ds, test_ds = fashion_subset(s["train_limit"], s["test_limit"])
    arch = cnn3(train_ds.num_classes, "fashion_mnist")
    xa, ya = jnp.asarray(test_ds.x[: s["analysis_batch"]]), jnp.asarray(test_ds.y[: s["analysis_batch"]])
    runs: list[dict[str, Any]] = []
    for eps in s["eps"]:
        for seed in seeds:
            for relaxation in s["relaxations"]:
                config = config_for(relaxation, eps, s, seed)
                desc = f"{relaxation} ε={eps:g} seed {seed}"
                params, summary = fit(config, arch, train_ds, progress=not args.no_progress, desc=desc)
                acc = certify_accuracies(
                    arch, params, test_ds, eps, s["cascade"], pgd_steps=s["pgd_steps"],
                    pgd_restarts=s["pgd_restarts"], apgd_steps=s["apgd_steps"], seed=seed,
                    progress=not args.no_progress,
                )  # fmt: skip
                row = {"relaxation": relaxation, "eps": eps, "seed": seed, **summary, **acc}
                row |= loss_analysis(arch, params, xa, ya, relaxation, eps, s, seed)
                runs.append(row)
                write_partial(args.out, NAME, runs)
                print(f"{desc}: clean {acc['clean_acc']:.3f} cert {acc['cert_acc']:.3f} "
                      f"(IBP {acc['cert_acc/ibp']:.3f}), tightness {row['tightness']:.3f}", flush=True)  # fmt: skip
    return runs


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, sized=True)
    s = sized_setting(SETTINGS, args)
    start = time.time()
    runs, seeds = runs_of(args, s, NAME, train_and_certify)
    summary_rows = summarise(runs, ("relaxation", "eps"), METRICS)
    cells = [
        {"relaxation": r["relaxation"], "eps": r["eps"], "seeds": r["seeds"],
         **{k: pm(r, k, percent="acc" in k) for k in METRICS if k not in ("relaxation", "eps")}}
        for r in summary_rows
    ]  # fmt: skip
    columns = [
        ("relaxation", "trained with"), ("eps", "ε"), ("seeds", "seeds"), ("clean_acc", "clean %"),
        ("pgd_acc", "PGD %"), ("cert_acc/ibp", "cert IBP %"), ("cert_acc", "cert (cascade) %"),
        ("tightness", "tightness"), *((("rel_jump_coarse", "rel jump"), ("rel_jump_fine", "rel jump (4x finer)"))
                                      if s["grids"] else ()),
        ("sens_1e-3", "S(σ=1e-3)"), ("sens_1e-2", "S(σ=1e-2)"), ("grad_norm", "‖∇L‖"), ("loss_variation", "V (Lee)"),
        ("min_cosine", "min cos (Lee)"), ("unstable_ibp", "unstable (IBP)"), ("train_seconds", "train s"),
    ]  # fmt: skip
    table = markdown_table(cells, columns)
    verdicts = findings(runs, tuple(s["eps"]))
    print(table)
    for v in verdicts:
        print(
            f"ε={v['eps']:g}: {v['claim']}: diff {100 * v['diff']:+.1f} pp (se {100 * v['se']:.1f}) -> {v['verdict']}"
        )
    settings = {**s, "setting": args.setting, "dataset": "fashion_mnist", "arch": "cnn3", "seeds": seeds}
    settings["config"] = dataclasses.asdict(config_for("<relaxation>", s["eps"][0], s, args.seed))
    write_results(args.out, NAME, settings, runs, table, time.time() - start, summary=summary_rows, findings=verdicts)
    return {"rows": runs, "summary": summary_rows, "findings": verdicts, "table": table}


if __name__ == "__main__":
    run()
