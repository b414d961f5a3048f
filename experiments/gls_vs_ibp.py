"""Gaussian Loss Smoothing (GLS) with tight relaxations vs gradient IBP training, on CNN3, several seeds.

CNN3 on Fashion-MNIST (28×28) is first trained by gradient descent on the IBP certified loss with the
recipe of ``paradox.py`` (the *warm start*, ``base_steps`` steps; ε and κ ramped to their final values).
From that net, for ``finetune_steps`` more steps at the final ε, each row then trains

- gradient IBP (the usual certified training, continued: the baseline),
- RGS: the mean of ``rgs_samples`` gradients of L_cert(θ + σz_i) (Adam), L_σ(θ) = E_z L_cert(θ + σz),
- PGPE: antithetic evolution strategy with centred ranks, ClipUp on the mean, σ relative to each weight
  tensor's scale (the recipe chosen by ``pgpe_study.py`` on a validation split),

on the certified loss of IBP, CROWN-IBP (β = 1) and DeepPoly. Every row starts from the same weights and
runs the same number of steps (PGPE: generations). Each net is certified on the **whole test set** at its
training ε by the cascade of ``python -m jaxcert.certify`` (PGD, then IBP → CROWN-IBP → CROWN [→
alpha-CROWN with optimised intermediate slopes in ``--full``]). Mean ± std over the seeds; the per-seed
runs are in the JSON (``rows``), with the verdicts of the seed finding ("GLS with a tight relaxation
certifies more than gradient IBP") per ε. The training loss reported is the loss at the returned weights
(at the mean μ for the GLS rows).

    python experiments/gls_vs_ibp.py [--quick | --full] [--seeds N] [--eps 0.1,0.2]

The default fits a 2-core CPU in about an hour: a short fine-tuning of short-trained nets, a smoke-scale
test of the finding, not the seed paper's budget; ``--full`` is sized for an accelerator (training from
the warm start for thousands of steps with populations of hundreds).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    save_run,
    sized_setting,
    summarise,
    write_partial,
    write_results,
)

from jaxcert.nets.architectures import cnn3
from jaxcert.train.configs import TrainConfig

NAME = "gls_vs_ibp"
TIGHT = ("crown-ibp", "deeppoly")
ROWS = (("certified", "ibp"), ("rgs", "ibp"), ("rgs", "crown-ibp"), ("rgs", "deeppoly"),
        ("pgpe", "ibp"), ("pgpe", "crown-ibp"), ("pgpe", "deeppoly"))  # fmt: skip

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        "train_limit": 512, "test_limit": 48, "batch_size": 16, "base_steps": 4, "finetune_steps": 2,
        "eps": (0.1,), "seeds": 1, "rows": (("certified", "ibp"), ("rgs", "deeppoly"), ("pgpe", "deeppoly")),
        "lr": 1e-3, "finetune_lr": 1e-4, "rgs_samples": 2, "rgs_sigma": 0.01, "pgpe_population": 4,
        "pgpe_lr": 0.01, "pgpe_max_speed": 0.02, "pgpe_sigma_rel": 0.1, "cascade": ("ibp", "crown"),
        "pgd_steps": 2, "apgd_steps": 0, "pgd_restarts": 1,
    },
    "default": {
        "train_limit": None, "test_limit": None, "batch_size": 32, "base_steps": 160, "finetune_steps": 40,
        "eps": (0.1, 0.2), "seeds": 3, "rows": ROWS, "lr": 1e-3, "finetune_lr": 5e-4, "rgs_samples": 2,
        "rgs_sigma": 0.01, "pgpe_population": 8, "pgpe_lr": 0.01, "pgpe_max_speed": 0.02, "pgpe_sigma_rel": 0.1,
        "cascade": ("ibp", "crown-ibp", "crown"), "pgd_steps": 5, "apgd_steps": 0, "pgd_restarts": 1,
    },
    "full": {
        "train_limit": None, "test_limit": None, "batch_size": 128, "base_steps": 10000, "finetune_steps": 5000,
        "eps": (0.1, 0.3), "seeds": 3, "rows": ROWS, "lr": 5e-4, "finetune_lr": 5e-5, "rgs_samples": 8,
        "rgs_sigma": 0.01, "pgpe_population": 256, "pgpe_lr": 0.01, "pgpe_max_speed": 0.02, "pgpe_sigma_rel": 0.1,
        "cascade": ("ibp", "crown-ibp", "crown", "alpha-crown", "alpha-crown-full"),
        "pgd_steps": 20, "apgd_steps": 100,
        "pgd_restarts": 3,
    },
}  # fmt: skip

METRICS = (
    "clean_acc", "pgd_acc", "robust_acc", "cert_acc", "cert_acc/ibp", "cert_acc/crown-ibp", "cert_acc/crown",
    "train_loss", "train_seconds", "certify_seconds",
)  # fmt: skip


def base_config(eps: float, s: dict, seed: int) -> TrainConfig:
    """The warm start: gradient IBP with the recipe of ``paradox.py``."""
    return TrainConfig(
        name=f"warm-start-ibp-eps{eps:g}", arch="cnn3", method="certified", relaxation="ibp", eps=eps,
        steps=s["base_steps"], batch_size=s["batch_size"], lr=s["lr"], warmup_frac=0.05, ramp_frac=0.5,
        kappa_final=0.0, beta_final=1.0, lr_decay_fracs=(0.8,), init="ibp", seed=seed, train_limit=s["train_limit"],
    )  # fmt: skip


def finetune_config(method: str, relaxation: str, eps: float, s: dict, seed: int, init_from: str) -> TrainConfig:
    """A row: ``finetune_steps`` steps of ``method`` on ``relaxation``'s certified loss from ``init_from``,
    ε at its final value throughout, constant learning rate."""
    config = dataclasses.replace(
        base_config(eps, s, seed), name=f"{method}-{relaxation}-eps{eps:g}", method=method, relaxation=relaxation,
        steps=s["finetune_steps"], lr=s["finetune_lr"], lr_decay_fracs=(), warmup_frac=0.0, ramp_frac=0.0,
        init_from=init_from, sigma=s["rgs_sigma"], samples=s["rgs_samples"],
    )  # fmt: skip
    if method == "pgpe":
        config = dataclasses.replace(
            config, lr=s["pgpe_lr"], pgpe_optimizer="clipup", max_speed=s["pgpe_max_speed"],
            sigma_rel=s["pgpe_sigma_rel"], population=s["pgpe_population"],
        )  # fmt: skip
    return config


def findings(runs: list[dict[str, Any]], epsilons: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per ε and GLS row with a tight relaxation: does it certify more than gradient IBP, and more than the
    same GLS method on IBP, over the seeds?"""
    out = []

    def cert(eps: float, method: str, relaxation: str) -> list[float]:
        return [r["cert_acc"] for r in runs if (r["eps"], r["method"], r["relaxation"]) == (eps, method, relaxation)]

    for eps in epsilons:
        ibp = cert(eps, "certified", "ibp")
        for method in ("rgs", "pgpe"):
            for relaxation in TIGHT:
                gls = cert(eps, method, relaxation)
                if ibp and gls:
                    claim = f"cert({method.upper()}-{relaxation}) > cert(gradient IBP)"
                    out.append({"eps": eps, "claim": claim, **compare(gls, ibp)})
                same_method_ibp = cert(eps, method, "ibp")
                if same_method_ibp and gls:
                    claim = f"cert({method.upper()}-{relaxation}) > cert({method.upper()}-ibp)"
                    out.append({"eps": eps, "claim": claim, **compare(gls, same_method_ibp)})
    return out


def train_and_certify(s: dict[str, Any], seeds: list[int], args: Any) -> list[dict[str, Any]]:
    """Per (ε, seed): the warm start, then one run per row from it, each certified on the test set; the rows
    so far are saved after each run (``<name>.partial.json``)."""
    train_ds, test_ds = fashion_subset(s["train_limit"], s["test_limit"])
    arch = cnn3(train_ds.num_classes, "fashion_mnist")
    runs: list[dict[str, Any]] = []
    progress = not args.no_progress
    with tempfile.TemporaryDirectory(prefix="gls_vs_ibp_") as tmp:
        for eps in s["eps"]:
            for seed in seeds:
                base = base_config(eps, s, seed)
                params, base_summary = fit(base, arch, train_ds, progress=progress, desc=base.name)
                source = save_run(Path(tmp) / f"base-{eps:g}-{seed}", base, params)
                for method, relaxation in s["rows"]:
                    config = finetune_config(method, relaxation, eps, s, seed, str(source))
                    desc = f"{config.name} seed {seed}"
                    params, summary = fit(config, arch, train_ds, progress=progress, desc=desc)
                    summary["train_loss"] = summary.get("train_loss_at_mean", summary["train_loss"])
                    summary["train_seconds"] += base_summary["train_seconds"]
                    acc = certify_accuracies(
                        arch, params, test_ds, eps, s["cascade"], pgd_steps=s["pgd_steps"],
                        pgd_restarts=s["pgd_restarts"], apgd_steps=s["apgd_steps"], seed=seed, progress=progress,
                    )  # fmt: skip
                    row = {"method": method, "relaxation": relaxation, "eps": eps, "seed": seed, **summary, **acc}
                    runs.append(row)
                    write_partial(args.out, NAME, runs)
                    print(f"{desc}: clean {acc['clean_acc']:.3f} cert {acc['cert_acc']:.3f} "
                          f"(IBP {acc['cert_acc/ibp']:.3f})", flush=True)  # fmt: skip
    return runs


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, sized=True)
    s = sized_setting(SETTINGS, args)
    start = time.time()
    runs, seeds = runs_of(args, s, NAME, train_and_certify)
    summary_rows = summarise(runs, ("method", "relaxation", "eps"), METRICS)
    cells = [
        {"method": r["method"], "relaxation": r["relaxation"], "eps": r["eps"], "seeds": r["seeds"],
         **{k: pm(r, k, percent="acc" in k) for k in METRICS}}
        for r in summary_rows
    ]  # fmt: skip
    columns = [
        ("method", "training"), ("relaxation", "relaxation"), ("eps", "ε"), ("seeds", "seeds"),
        ("clean_acc", "clean %"), ("pgd_acc", "PGD %"), ("cert_acc/ibp", "cert IBP %"),
        ("cert_acc", "cert (cascade) %"), ("train_loss", "final train loss"), ("train_seconds", "train s"),
    ]  # fmt: skip
    table = markdown_table(cells, columns)
    verdicts = findings(runs, tuple(s["eps"]))
    print(table)
    for v in verdicts:
        print(
            f"ε={v['eps']:g}: {v['claim']}: diff {100 * v['diff']:+.1f} pp (se {100 * v['se']:.1f}) -> {v['verdict']}"
        )
    settings = {**s, "setting": args.setting, "dataset": "fashion_mnist", "arch": "cnn3", "seeds": seeds}
    example = finetune_config("pgpe", "deeppoly", s["eps"][0], s, args.seed, "<warm start>")
    settings["example_config"] = dataclasses.asdict(example)
    write_results(args.out, NAME, settings, runs, table, time.time() - start, summary=summary_rows, findings=verdicts)
    return {"rows": runs, "summary": summary_rows, "findings": verdicts, "table": table}


if __name__ == "__main__":
    run()
