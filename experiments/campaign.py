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
CROWN-IBP bound alone), ``deeppoly`` (full CROWN/DeepPoly), ``crown-ibp-fused`` (CROWN-IBP, loss fusion), the
smoothed arms ``rgs-<loss>`` and ``pgpe-<loss>``, and the state-of-the-art objectives ``sabr``, ``taps``,
``staps``, ``mtl-ibp``, ``cc-ibp``, ``exp-ibp`` (8 PGD steps inside the loss; the TAPS split at the library's
default), and ``pgd`` (adversarial training, 8 steps: the control of robust vs certified accuracy, tuned for
validation PGD accuracy and compared seed by seed on certified, clean and PGD accuracy). Without ``--tune``
every arm runs at its defaults; with it, λ / α / σ and the lr are chosen from the grids of :data:`TUNING`
(:data:`WARM_TUNING` for runs that start from another arm's weights, ``--warm-from``).

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
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, markdown_table, paired_mean_se

from jaxcert.certify import certify_dataset
from jaxcert.provenance import provenance
from jaxcert.runs import load_test_split
from jaxcert.train.configs import TrainConfig
from jaxcert.train.logging import read_metrics
from jaxcert.workflow import train

#: The certified losses of the paradox: interval, CROWN-IBP (β = 1: its bound alone) and DeepPoly (full CROWN).
RELAXATION_FIELDS: dict[str, dict[str, Any]] = {
    "ibp": {"relaxation": "ibp"},
    "crown-ibp": {"relaxation": "crown-ibp", "beta_final": 1.0},
    "deeppoly": {"relaxation": "deeppoly"},
}
#: Arm name -> config fields over the recipe (defaults; ``--tune`` replaces the tuned ones, see TUNING).
ARMS: dict[str, dict[str, Any]] = {
    **RELAXATION_FIELDS,
    "crown-ibp-fused": {"relaxation": "crown-ibp", "beta_final": 1.0, "loss_fusion": True},
    # Gaussian loss smoothing of each certified loss: RGS (first order, 4 samples) and PGPE (zeroth order,
    # ClipUp on the mean, σ relative to each weight tensor's initial scale)
    **{f"rgs-{r}": {"method": "rgs", "samples": 4, "sigma_rel": 0.05, **f} for r, f in RELAXATION_FIELDS.items()},
    **{f"pgpe-{r}": {"method": "pgpe", "population": 32, "pgpe_optimizer": "clipup", "sigma_rel": 0.1, "lr": 0.01,
                     **f} for r, f in RELAXATION_FIELDS.items()},
    # the state-of-the-art objectives (jaxcert.train.methods) at the library's defaults unless tuned
    **{m: {"method": m, "attack_steps": 8} for m in ("sabr", "taps", "staps", "mtl-ibp", "cc-ibp", "exp-ibp")},
    # the control of the robust-vs-certified finding: PGD adversarial training (8 steps, the same ε ramp)
    "pgd": {"method": "pgd", "attack_steps": 8},
}  # fmt: skip
#: What an arm is tuned for, on the validation split: certified accuracy, except PGD training (PGD accuracy).
SCORE = {"pgd": "val_pgd_acc"}
#: The metrics compared seed by seed: certified accuracy for every arm; for PGD training also clean and PGD
#: accuracy and robust accuracy (no attack of the certifier succeeds; De Bartolomeis et al.: adversarial
#: training wins on standard and empirical robust error).
PAIRED_METRICS = {"pgd": ("cert_acc", "cert_bab_acc", "clean_acc", "pgd_acc", "robust_acc")}
#: Equal tuning effort: every arm family gets the same number (4) of candidates, each trained at the full
#: budget on the tuning seed and scored by its final validation certified accuracy.
TUNING: dict[str, list[dict[str, Any]]] = {
    "certified": [{"lr": lr} for lr in (1e-3, 2e-3, 4e-3, 8e-3)],
    "rgs": [{"sigma_rel": s, "lr": lr} for s in (0.01, 0.05) for lr in (1e-3, 3e-3)],
    "pgpe": [{"sigma_rel": s, "lr": lr} for s in (0.05, 0.1) for lr in (0.005, 0.02)],
    "sabr": [{"sabr_lambda": lam, "lr": lr} for lam in (0.2, 0.4) for lr in (1e-3, 2e-3)],
    "staps": [{"sabr_lambda": lam, "lr": lr} for lam in (0.2, 0.4) for lr in (1e-3, 2e-3)],
    "taps": [{"lr": lr} for lr in (1e-3, 2e-3, 4e-3, 8e-3)],
    # α around each paper's own values (MNIST 0.1 / 0.3, CIFAR-10): MTL-IBP 0.01-0.08, CC-IBP 0.1-0.3,
    # EXP-IBP 0.095-0.5 (De Palma et al., ICLR 2024, config/*.json)
    **{m: [{"method_alpha": a, "lr": lr} for a in alphas for lr in (1e-3, 2e-3)]
       for m, alphas in (("mtl-ibp", (0.01, 0.1)), ("cc-ibp", (0.1, 0.3)), ("exp-ibp", (0.1, 0.5)))},
}  # fmt: skip
#: The grids of the runs that start from another arm's converged weights (``--warm-from``): the same number
#: of candidates per family, with the gradient step sizes a decade lower (a fine-tune from a converged net,
#: whose own schedule ended at 1 % of its lr); PGPE's ClipUp step is a norm in weight space, kept.
WARM_TUNING: dict[str, list[dict[str, Any]]] = {
    **TUNING,
    "certified": [{"lr": lr} for lr in (1e-4, 2e-4, 4e-4, 8e-4)],
    "rgs": [{"sigma_rel": s, "lr": lr} for s in (0.01, 0.05) for lr in (1e-4, 3e-4)],
}  # fmt: skip
#: The seed of the tuning runs: not one of the verdicts' seeds (0, 1, ...), so selection does not favour them.
TUNE_SEED = 1000
#: Short names of tuned fields in run ids.
SHORT = {"lr": "lr", "sigma_rel": "sr", "sabr_lambda": "lam", "method_alpha": "a"}


def grid(arm: str, warm: str | None = None) -> list[dict[str, Any]]:
    """The tuning candidates of ``arm``: its family's grid, or the fine-tuning grid when it starts warm."""
    return (WARM_TUNING if warm else TUNING)[family(arm)]


def family(arm: str) -> str:
    """The tuning family of ``arm``: its trainer (``rgs``, ``pgpe``), its state-of-the-art method, or
    ``certified`` (gradient training of a certified loss)."""
    method = ARMS[arm].get("method", "certified")
    return method if method in TUNING else "certified"


#: Training images of Fashion-MNIST and the validation images held out of them.
TRAIN_IMAGES, VAL_SIZE = 60000, 5000
CASCADE = ("ibp", "crown-ibp", "crown", "alpha-crown")
#: The fields of a row's branch-and-bound certification (``experiments/campaign_bab.py``, in ``bab.json``).
BAB_FIELDS = ("cert_bab_acc", "robust_bab_acc", "open_bab_acc")
METRICS = ("clean_acc", "pgd_acc", "robust_acc", "cert_acc", "cert_acc/ibp", "cert_acc/crown-ibp", *BAB_FIELDS)
#: Settings: (train_limit, val_size, test_limit, batch_size, certify PGD steps / restarts / APGD steps).
SETTINGS = {
    "quick": {"train_limit": 640, "val_size": 128, "test_limit": 64, "batch_size": 64, "pgd": (3, 1, 0)},
    "default": {"train_limit": None, "val_size": VAL_SIZE, "test_limit": None, "batch_size": 128, "pgd": (20, 3, 100)},
}


def _suffix(overrides: dict[str, Any]) -> str:
    return "".join(f"-{SHORT.get(k, k)}{v:g}" for k, v in sorted(overrides.items()))


def run_id(arm: str, eps: float, epochs: float, seed: int, *, arch: str = "cnn3",
           overrides: dict[str, Any] | None = None, warm: str | None = None) -> str:  # fmt: skip
    """``[arch-]arm[@warm]-eps…-e…-s…[-tuned fields]`` (CNN3 runs keep the ids of the untuned campaign)."""
    head = ("" if arch == "cnn3" else f"{arch}-") + arm + (f"@{warm}" if warm else "")
    return f"{head}-eps{eps:g}-e{epochs:g}-s{seed}" + _suffix(overrides or {})


def arm_config(arm: str, eps: float, epochs: float, seed: int, setting: dict[str, Any], runs: Path, *,
               arch: str = "cnn3", overrides: dict[str, Any] | None = None, warm: str | None = None,
               warm_epochs: float = 20.0, warm_overrides: dict[str, Any] | None = None,
               val_relaxations: tuple[str, ...] = ()) -> TrainConfig:  # fmt: skip
    """The run of ``arm`` at training and test radius ``eps``: ``epochs`` passes over the training images
    left after the validation split, validated 10 times (and at the end), checkpointed as often.

    ``overrides``: tuned fields over the arm's defaults. ``warm``: start from the final weights of the run of
    arm ``warm`` (same seed, ε and architecture, ``warm_epochs`` epochs, its tuned fields ``warm_overrides``
    if it was tuned), at the final ε from the first step (no warm-up, no ramp)."""
    images = (setting["train_limit"] or TRAIN_IMAGES) - setting["val_size"]
    steps = max(10, round(epochs * images / setting["batch_size"]))
    every = max(1, steps // 10)
    fields: dict[str, Any] = {"lr": 1e-3, "warmup_frac": 0.05, "ramp_frac": 0.4, **ARMS[arm], **(overrides or {})}
    if warm:
        start = runs / run_id(warm, eps, warm_epochs, seed, arch=arch, overrides=warm_overrides)
        fields.update(init_from=str(start), warmup_frac=0.0, ramp_frac=0.0)
    out = runs / run_id(arm, eps, epochs, seed, arch=arch, overrides=overrides, warm=warm)
    return TrainConfig(
        name=f"campaign-{arm}", dataset="fashion_mnist", arch=arch, eps=eps, steps=steps,
        batch_size=setting["batch_size"], seed=seed, train_limit=setting["train_limit"],
        val_size=setting["val_size"], val_every=every, val_relaxations=tuple(val_relaxations), test_limit=None,
        checkpoint_every=every, out=str(out), **fields,
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


def score(records: list[dict[str, Any]], key: str) -> float | None:
    """The last validation value of ``key`` (a tuning candidate's score), ``None`` when never measured."""
    values = [r[key] for r in records if key in r]
    return values[-1] if values else None


def arm_name(row: dict[str, Any]) -> str:
    """The arm of a row without its tuned fields: ``arm``, or ``arm@warm`` for a warm start."""
    return row["arm"] + (f"@{row['warm']}" if row.get("warm") else "")


def label(row: dict[str, Any]) -> str:
    """The arm of a row as reported: ``arm[@warm]`` plus its tuned fields, e.g. ``rgs-deeppoly (lr=0.003, sr=0.05)``."""
    text = arm_name(row)
    tuned = row.get("overrides") or {}
    fields = ", ".join(f"{SHORT.get(k, k)}={v:g}" for k, v in sorted(tuned.items()))
    return f"{text} ({fields})" if tuned else text


def _setting(row: dict[str, Any]) -> tuple[str, float, float]:
    return row.get("arch", "cnn3"), row["eps"], row.get("epochs")


def paired(rows: list[dict[str, Any]], a: str, b: str, eps: float, metric: str = "cert_acc", *,
           arch: str = "cnn3", epochs: float | None = None) -> dict[str, Any] | None:  # fmt: skip
    """Mean ± standard error of ``metric(a) − metric(b)`` over the seeds both arms (labels, see :func:`label`)
    finished at ``eps`` on ``arch`` (and ``epochs``, if given)."""
    by = {(label(r), r["seed"]): r[metric] for r in rows if metric in r
          and r["eps"] == eps and r.get("arch", "cnn3") == arch and epochs in (None, r.get("epochs"))}  # fmt: skip
    seeds = sorted(s for arm, s in by if arm == a and (b, s) in by)
    if not seeds:
        return None
    mean, se = paired_mean_se([by[(a, s)] - by[(b, s)] for s in seeds])
    if len(seeds) < 3:
        verdict = f"not enough seeds ({len(seeds)})"
    else:
        verdict = f"{a} > {b}" if mean > 2 * se else f"{b} > {a}" if mean < -2 * se else "no difference shown"
    return {"a": a, "b": b, "metric": metric, "eps": eps, "arch": arch, "epochs": epochs, "seeds": seeds,
            "diff": mean, "se": se, "verdict": verdict}  # fmt: skip


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paired verdicts of a setting (architecture, ε, epochs): every arm against IBP (the first arm when
    there is no IBP row), and every smoothed arm (``rgs-X``, ``pgpe-X``) against the gradient arm of the same
    loss ``X`` from the same start (from scratch, or warm from the same arm): GLS's claim, told apart from "X
    beats IBP anyway"."""
    found = []
    for arch, eps, epochs in dict.fromkeys(_setting(r) for r in rows):
        labels = list(dict.fromkeys(label(r) for r in rows if _setting(r) == (arch, eps, epochs)))
        arms = {label(r): r["arm"] for r in rows if _setting(r) == (arch, eps, epochs)}
        warm = {label(r): r.get("warm") for r in rows if _setting(r) == (arch, eps, epochs)}
        base = next((x for x in labels if arms[x] == "ibp" and "@" not in x), labels[0])
        pairs = [(x, base) for x in labels if x != base]
        for x in labels:
            loss = arms[x].split("-", 1)[1] if arms[x].startswith(("rgs-", "pgpe-")) else None
            gradient = next((y for y in labels if arms[y] == loss and warm[y] == warm[x]), None)
            if gradient and gradient != base:
                pairs.append((x, gradient))
        for a, b in pairs:
            for metric in PAIRED_METRICS.get(arms[a], ("cert_acc", "cert_bab_acc")):
                if (c := paired(rows, a, b, eps, metric, arch=arch, epochs=epochs)) is not None:
                    found.append(c)
    return found


def with_bab(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the :data:`BAB_FIELDS` of their branch-and-bound record (by run id), where there is one."""
    by_run = {r["run"]: r for r in records}
    return [{**row, **{k: by_run[row["run"]][k] for k in BAB_FIELDS}} if row.get("run") in by_run else row
            for row in rows]  # fmt: skip


def report(rows: list[dict[str, Any]], out: Path) -> str:
    """Rewrite ``campaign.md`` / ``campaign.json`` / ``campaign_val.png`` from the finished rows (and their
    branch-and-bound certification, ``<out>/bab.json``, where it was run)."""
    rows = with_bab(rows, _load(out / "bab.json"))
    groups: dict[tuple[str, str, float, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("arch", "cnn3"), label(r), r["eps"], r["epochs"]), []).append(r)
    summary = []
    for (arch, arm, eps, epochs), runs in groups.items():
        row: dict[str, Any] = {"arch": arch, "arm": arm, "eps": eps, "epochs": epochs, "seeds": len(runs)}
        for m in (*METRICS, "val_cert_acc_best", "plateau_epoch", "val_cert_acc_gain", "train_seconds", "n_over_d"):
            values = [r[m] for r in runs if r.get(m) is not None]
            if values:
                row[m] = float(np.mean(values))
                row[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary.append(row)
    columns = [("arch", "net"), ("arm", "arm"), ("eps", "ε"), ("epochs", "epochs"), ("seeds", "seeds"),
               ("clean_acc", "clean %"), ("pgd_acc", "PGD %"), ("cert_acc/ibp", "cert IBP %"),
               ("cert_acc", "cert (cascade) %"), ("cert_bab_acc", "cert (BaB) %"), ("open_bab_acc", "open after BaB %"),
               ("val_cert_acc_best", "best val cert %"), ("plateau_epoch", "plateau epoch"),
               ("val_cert_acc_gain", "val cert gain, last third"), ("train_seconds", "train s"),
               ("n_over_d", "PGPE N/d")]  # fmt: skip
    lines = ["# Campaign: arms at converged budgets (Fashion-MNIST)", "",
             "Means over seeds (± sample std in campaign.json); test split used once, certified by "
             f"{' → '.join(CASCADE)} after PGD and APGD-CE; \"BaB\": then branch and bound on what the cascade "
             "left open (experiments/campaign_bab.py; open = neither verified nor falsified).", "",
             markdown_table(summary, columns), ""]  # fmt: skip
    verdicts = comparisons(rows)
    if verdicts:
        lines += ["| paired per seed | metric | net | ε | epochs | seeds | Δ % (mean ± s.e.) | verdict |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {c['a']} − {c['b']} | {c['metric']} | {c['arch']} | {c['eps']:g} | {c['epochs']:g} | "
                  f"{len(c['seeds'])} | {100 * c['diff']:+.2f} ± {100 * c['se']:.2f} | {c['verdict']} |"
                  for c in verdicts]  # fmt: skip
    lines += ["", "Per run:", "", markdown_table(rows, [("run", "run"), *columns[5:]])]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "campaign.md").write_text(text)
    record = {"summary": summary, "paired": verdicts, "rows": rows, "provenance": provenance()}
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
        name = f"{r.get('arch', 'cnn3')} {label(r)} ε={r['eps']:g} ({r['epochs']:g} ep.)"
        first = name not in colours
        colour = colours.setdefault(name, f"C{len(colours) % 10}")
        _, epochs, values = zip(*r["val_curve"], strict=True)
        curve = 100 * np.asarray(values)
        ax.plot(np.asarray(epochs) + 1, curve, color=colour, alpha=0.8, label=name if first else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation certified accuracy %")
    ax.grid(alpha=0.3)
    if colours:
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_one(arm: str, eps: float, epochs: float, seed: int, setting: dict[str, Any], runs: Path,
            progress: bool, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) one run (``options``: those of :func:`arm_config`), then certify it once on the test
    split."""
    config = arm_config(arm, eps, epochs, seed, setting, runs, **options)
    records, train_seconds = _train(config, progress)
    params = _final_params(config)
    cert = certify_test_split(config, get_arch(config), params, eps, seed, setting, progress)
    return {
        "run": Path(config.out).name, "arm": arm, "arch": config.arch, "warm": options.get("warm"),
        "overrides": options.get("overrides") or {}, "eps": eps, "epochs": epochs, "seed": seed,
        "steps": config.steps, "test_examples": cert.n, **cert.accuracies(), "certify_seconds": cert.seconds,
        "train_seconds": train_seconds, **plateau(records), **search_size(config, params),
    }  # fmt: skip


def certify_test_split(config: TrainConfig, arch: Any, params: Any, eps: float, seed: int, setting: dict[str, Any],
                       progress: bool, **stages: Any) -> Any:  # fmt: skip
    """The campaign's one certification of a net on the test split: the cascade :data:`CASCADE` after the
    setting's PGD and APGD-CE (``stages``: further ones, e.g. branch and bound)."""
    test = load_test_split(config, limit=setting["test_limit"])
    steps, restarts, apgd = setting["pgd"]
    return certify_dataset(arch, params, test, eps, relaxations=CASCADE, pgd_steps=steps, pgd_restarts=restarts,
                           apgd_steps=apgd, seed=seed, progress=progress, **stages)  # fmt: skip


def search_size(config: TrainConfig, params: Any) -> dict[str, Any]:
    """``n_params`` = d, the trainable weights; for PGPE also its population N and N/d (the search gradient's
    cosine with the true gradient is about √(N/d))."""
    import jax

    d = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    if config.method != "pgpe":
        return {"n_params": d}
    return {"n_params": d, "population": config.population, "n_over_d": config.population / d}


def _train(config: TrainConfig, progress: bool) -> tuple[list[dict[str, Any]], float]:
    """Train (or resume) ``config``; its metrics records and training seconds (the run's own clock)."""
    began = time.time()
    train(config, resume=True, progress=progress, evaluate=False)
    records = read_metrics(Path(config.out) / "metrics.jsonl")
    timed = [r["time"] for r in records if "time" in r]
    return records, (timed[-1] if timed else time.time() - began)


def get_arch(config: TrainConfig) -> Any:
    from jaxcert.nets import get_architecture

    return get_architecture(config.arch, dataset=config.dataset)


def _final_params(config: TrainConfig) -> Any:
    from jaxcert.runs import load_run

    return load_run(config.out)[1]


def tune_one(arm: str, eps: float, epochs: float, setting: dict[str, Any], runs: Path, progress: bool,
             candidate: dict[str, Any], **options: Any) -> dict[str, Any]:  # fmt: skip
    """Train one tuning candidate on :data:`TUNE_SEED` and score it on the validation split (no test images)."""
    config = arm_config(arm, eps, epochs, TUNE_SEED, setting, runs, overrides=candidate, **options)
    records, train_seconds = _train(config, progress)
    return {"run": Path(config.out).name, "arm": arm, "arch": config.arch, "warm": options.get("warm"),
            "eps": eps, "epochs": epochs, "overrides": candidate, "train_seconds": train_seconds,
            **plateau(records), "score_final": score(records, SCORE.get(arm, "val_cert_acc"))}  # fmt: skip


def tuned_choice(tuning: list[dict[str, Any]], arm: str, arch: str, eps: float, epochs: float,
                 warm: str | None) -> dict[str, Any] | None:  # fmt: skip
    """The candidate of ``arm`` with the best final validation certified accuracy (the first on ties), once
    every candidate of its family's grid has been scored; ``None`` before. Runs of candidates no longer in
    the grid (an earlier grid) are not counted, so every arm is chosen from the same number of candidates."""
    order = {json.dumps(c, sort_keys=True): i for i, c in enumerate(grid(arm, warm))}
    scored = [t for t in tuning if (t["arm"], t["arch"], t["eps"], t["epochs"], t.get("warm")) ==
              (arm, arch, eps, epochs, warm) and json.dumps(t["overrides"], sort_keys=True) in order]  # fmt: skip
    if len(scored) < len(order):
        return None
    scored.sort(key=lambda t: order[json.dumps(t["overrides"], sort_keys=True)])
    return max(scored, key=lambda t: _score(t))["overrides"]


def _score(t: dict[str, Any]) -> float:
    """A tuning row's score: ``score_final`` (rows since the PGD arm), else its final validation cert. acc."""
    value = t.get("score_final", t.get("val_cert_acc_final"))
    return -1.0 if value is None else value


def _check_start(config: TrainConfig, out: Path) -> None:
    """Exit with one line, before any set-up work, when a warm start's run has not finished (no row of it in
    ``out``'s ``rows.json`` or ``tuning.json``): its latest checkpoint would not be its final weights."""
    if not config.init_from:
        return
    finished = {r["run"] for name in ("rows.json", "tuning.json") for r in _load(out / name)}
    if Path(config.init_from).name not in finished:
        raise SystemExit(f"campaign: the warm start {config.init_from} has not finished; run its arm first")


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
    p.add_argument("--arch", default="cnn3", help="architecture of every arm (jaxcert.nets.ARCHITECTURES)")
    p.add_argument("--eps", default="0.1", help="comma list of radii (training = test radius)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--epochs", type=float, default=20.0)
    tune_help = f"train every arm's tuning candidates (seed {TUNE_SEED}, validation only) instead of seeds"
    p.add_argument("--tune", action="store_true", help=tune_help)
    p.add_argument("--warm-from", default=None, help="start every arm from this arm's final weights (same seed)")
    p.add_argument("--warm-epochs", type=float, default=20.0, help="epochs of the --warm-from runs")
    val_help = "validation cascade (default: ibp,crown-ibp on cnn3; ibp,crown-ibp,crown on other nets)"
    p.add_argument("--val-relaxations", default=None, help=val_help)
    p.add_argument("--quick", action="store_true", help="tiny budget and data (tests)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "campaign")
    p.add_argument("--runs", type=Path, default=Path("runs/campaign"), help="run folders (checkpoints)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    if args.warm_from is not None and args.warm_from not in ARMS:
        p.error(f"unknown --warm-from arm {args.warm_from!r}; known: {', '.join(ARMS)}")
    from jaxcert.train.preflight import ARCHITECTURES, RELAXATIONS

    if args.arch not in ARCHITECTURES:
        p.error(f"unknown --arch {args.arch!r}; known: {', '.join(ARCHITECTURES)}")
    default_val = "ibp,crown-ibp" if args.arch == "cnn3" else "ibp,crown-ibp,crown"
    args.val_relaxations = tuple(r.strip() for r in (args.val_relaxations or default_val).split(",") if r.strip())
    if bad := [r for r in args.val_relaxations if r not in RELAXATIONS]:
        p.error(f"unknown --val-relaxations {bad}; known: {', '.join(RELAXATIONS)}")
    try:
        args.eps = [float(e) for e in args.eps.split(",")]
    except ValueError:
        p.error(f"--eps must be comma-separated numbers, got {args.eps!r}")
    if args.seeds < 1 or args.epochs <= 0 or args.warm_epochs <= 0:
        p.error("--seeds must be >= 1, --epochs and --warm-epochs > 0")
    return args


def _load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    setting = SETTINGS["quick" if args.quick else "default"]
    rows_path, tuning_path = args.out / "rows.json", args.out / "tuning.json"
    options: dict[str, Any] = {"arch": args.arch, "warm": args.warm_from, "warm_epochs": args.warm_epochs,
                               "val_relaxations": args.val_relaxations}  # fmt: skip
    progress = not args.no_progress

    def warm_choice(eps: float) -> dict[str, Any] | None:
        """The tuned fields of the ``--warm-from`` arm (its runs are the tuned ones, where it was tuned)."""
        if args.warm_from is None:
            return None
        return tuned_choice(_load(tuning_path), args.warm_from, args.arch, eps, args.warm_epochs, None)

    if args.tune:
        for eps in args.eps:
            for arm in args.arms:
                for candidate in grid(arm, args.warm_from):
                    opts = {**options, "warm_overrides": warm_choice(eps)}
                    config = arm_config(arm, eps, args.epochs, TUNE_SEED, setting, args.runs, overrides=candidate,
                                        **opts)  # fmt: skip
                    if Path(config.out).name in {t["run"] for t in _load(tuning_path)}:
                        continue
                    _check_start(config, args.out)
                    t = tune_one(arm, eps, args.epochs, setting, args.runs, progress, candidate, **opts)
                    save_row(tuning_path, t)
                    print(f"{t['run']}: final val cert {100 * t.get('val_cert_acc_final', 0):.2f}%", flush=True)
        tuning = _load(tuning_path)
        lines = [f"{arm} ε={eps:g}: {tuned_choice(tuning, arm, args.arch, eps, args.epochs, args.warm_from)}"
                 for eps in args.eps for arm in args.arms]  # fmt: skip
        text = "tuned choices (by final validation certified accuracy):\n" + "\n".join(lines)
        print(text)
        return text
    rows = _load(rows_path)
    text = ""
    for seed in range(args.seed, args.seed + args.seeds):  # seed-major: paired rows arrive together
        for eps in args.eps:
            for arm in args.arms:
                chosen = tuned_choice(_load(tuning_path), arm, args.arch, eps, args.epochs, args.warm_from)
                run = run_id(arm, eps, args.epochs, seed, arch=args.arch, overrides=chosen, warm=args.warm_from)
                if run in {r["run"] for r in rows}:
                    continue
                if chosen is None:
                    print(f"{arm}: not tuned (no complete --tune rows): its default settings", flush=True)
                opts = {**options, "warm_overrides": warm_choice(eps)}
                config = arm_config(arm, eps, args.epochs, seed, setting, args.runs, overrides=chosen, **opts)
                _check_start(config, args.out)
                began = time.time()
                row = run_one(arm, eps, args.epochs, seed, setting, args.runs, progress, overrides=chosen, **opts)
                row["wall_seconds"] = time.time() - began
                rows = save_row(rows_path, row)
                text = report(rows, args.out)
                print(f"{row['run']}: cert {100 * row['cert_acc']:.2f}% (saved to {rows_path})", flush=True)
    if rows and not text:  # nothing new was run: the report of the saved rows
        text = report(rows, args.out)
    print(text)
    return text


if __name__ == "__main__":
    from jaxcert.cpu_runtime import keep_freed_host_memory_if_fresh

    keep_freed_host_memory_if_fresh()  # as python -m jaxcert.train does: XLA:CPU reuses its buffers' pages
    main()
