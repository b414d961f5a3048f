"""Continuity, smoothness and tightness of the certified losses at the campaign's converged nets (issue 22).

The paradox's explanation (Jovanović et al., 2022) is that tight relaxations give losses that are
discontinuous and sensitive in the weights; Lee et al. (2021) measure smoothness along the gradient step.
The seed experiments measured these after a twelfth of an epoch; this script measures them at the nets of
``experiments/campaign.py``, trained to their validation plateau.

For every finished run of ``--arch`` in ``<campaign>/rows.json`` (its final weights, read with
:func:`jaxcert.runs.load_run`; nothing is written into the run), on the first ``--batch`` images of the
**validation split** (the last ``val_size`` training images: the test split stays used once), for each loss
``L`` of ``--losses`` (the certified cross-entropy of that relaxation's margin lower bounds at the run's ε):

    tightness       1/ρ, ρ = Σ (m(x) − lb_L) / Σ (m(x) − lb_alpha-CROWN): 1 = as tight as alpha-CROWN
    jump, rel       largest neighbour step of L(θ + t d), t on grids of 101 and 401 points of [−0.05, 0.05],
                    d a filter-normalised random direction; a discontinuity keeps its jump under refinement
    S_σ             mean |L(θ + σ z) − L(θ)| at σ = 1e-3, 1e-2 (→ 0 linearly for a continuous loss)
    ‖∇L‖, V, cos    gradient norm; loss variation and min gradient cosine along θ − c·η·∇L (Lee et al.)
    unstable        mean crossing ReLUs per example under IBP bounds

(:func:`paradox.loss_analysis`). Every net is measured under every loss, so "the DeepPoly loss is rougher
than IBP's" can be told apart from "the DeepPoly-trained net is rougher". Per (arm, loss): mean ± std over
seeds; per loss and metric, paired per-seed differences of each arm against IBP.

Resumable: each (run, loss) result is saved to ``<out>/analysis.json`` as it completes; rerunning skips them.

    python experiments/converged_analysis.py --arch mlp_14x14
    python experiments/converged_analysis.py --quick --campaign /tmp/campaign --runs /tmp/runs --out /tmp/ca
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

from common import paired_mean_se

HERE = Path(__file__).resolve().parent
METRICS = ("tightness", "rel_jump_coarse", "rel_jump_fine", "sens_1e-3", "sens_1e-2", "grad_norm",
           "loss_variation", "min_cosine", "unstable_ibp", "cert_loss")  # fmt: skip
SETTINGS = {
    "quick": {"reference": "crown", "grids": (5, 9), "sweep_range": 0.05, "sens_samples": 2, "landscape_points": 2},
    "default": {"reference": "alpha-crown", "grids": (101, 401), "sweep_range": 0.05, "sens_samples": 8,
                "landscape_points": 6},
}  # fmt: skip
#: The relaxation names of the campaign's losses (the analysis tools take ``crown`` for DeepPoly).
LOSSES = {"ibp": "ibp", "crown-ibp": "crown-ibp", "deeppoly": "crown"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="mlp_14x14", help="the campaign's architecture whose runs are analysed")
    p.add_argument("--losses", default="ibp,crown-ibp,deeppoly", help=f"comma list of {sorted(LOSSES)}")
    arms_help = "comma list of the campaign arms whose nets are analysed (from scratch; warm starts: arm@warm)"
    p.add_argument("--arms", default="ibp,crown-ibp,deeppoly", help=arms_help)
    p.add_argument("--batch", type=int, default=128, help="validation images per loss evaluation")
    p.add_argument("--epochs", type=float, default=None, help="only the runs of this budget (default: every budget)")
    p.add_argument("--campaign", type=Path, default=HERE / "results" / "campaign", help="the campaign's --out")
    p.add_argument("--runs", type=Path, default=Path("runs/campaign"), help="the campaign's run folders")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: --campaign)")
    p.add_argument("--quick", action="store_true", help="tiny grids and samples (tests)")
    args = p.parse_args(argv)
    losses = args.losses.split(",")
    if unknown := [x for x in losses if x not in LOSSES]:
        p.error(f"unknown losses {unknown}; known: {sorted(LOSSES)}")
    if not (args.campaign / "rows.json").is_file():
        p.error(f"{args.campaign / 'rows.json'} does not exist: run experiments/campaign.py first")
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    args.losses, args.out = losses, args.out or args.campaign
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    return args


def validation_batch(config: Any, n: int) -> tuple[Any, Any]:
    """The first ``n`` validation images of the run (its held-out training images)."""
    import jax.numpy as jnp

    from jaxcert.train.run_data import load_data, validation_split

    train, _ = load_data(config)
    _, val = validation_split(train, config.val_size)
    if val is None:
        raise ValueError(f"run {config.out} has no validation split (val_size 0)")
    return jnp.asarray(val.x[:n]), jnp.asarray(val.y[:n])


def analyse_run(row: dict[str, Any], runs: Path, losses: list[str], batch: int, setting: dict[str, Any],
                done: set[tuple[str, str]]) -> list[dict[str, Any]]:  # fmt: skip
    """The measurements of ``row``'s net under each loss not in ``done``."""
    from paradox import loss_analysis

    from jaxcert.runs import load_run

    todo = [loss for loss in losses if (row["run"], loss) not in done]
    if not todo:
        return []
    arch, params, config = load_run(runs / row["run"])
    x, y = validation_batch(config, batch)
    out = []
    for loss in todo:
        start = time.perf_counter()
        measured = loss_analysis(arch, params, x, y, LOSSES[loss], row["eps"], setting, row["seed"])
        out.append({"run": row["run"], "arm": row["arm"], "warm": row.get("warm"), "label": label(row),
                    "seed": row["seed"], "eps": row["eps"], "epochs": row["epochs"], "loss": loss, **measured,
                    "seconds": time.perf_counter() - start})  # fmt: skip
    return out


def label(row: dict[str, Any]) -> str:
    from campaign import label as campaign_label

    return campaign_label(row)


def paired_against(results: list[dict[str, Any]], base: str = "ibp") -> list[dict[str, Any]]:
    """Per (setting, loss, metric, arm ≠ base): mean ± s.e. of the per-seed differences arm − base; ``base``
    is an arm name, matched to its label in the setting (a tuned arm's label carries its fields: ``ibp (lr=…)``)."""
    key = lambda r: (r["eps"], r["epochs"], r["loss"])
    out = []
    for setting in dict.fromkeys(key(r) for r in results):
        rows = [r for r in results if key(r) == setting]
        by = {(r["label"], r["seed"]): r for r in rows}
        ref = next((r["label"] for r in rows if r["arm"] == base and not r.get("warm")), None)
        for arm in dict.fromkeys(r["label"] for r in rows):
            if ref is None or arm == ref:
                continue
            seeds = sorted(s for a, s in by if a == arm and (ref, s) in by)
            for metric in METRICS:
                d = [by[(arm, s)][metric] - by[(ref, s)][metric] for s in seeds
                     if metric in by[(arm, s)] and metric in by[(ref, s)]]  # fmt: skip
                if d:
                    mean, se = paired_mean_se(d)
                    out.append({"eps": setting[0], "epochs": setting[1], "loss": setting[2], "arm": arm,
                                "base": ref, "metric": metric, "seeds": len(d), "diff": mean, "se": se})  # fmt: skip
    return out


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (ε, epochs, arm, loss)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["eps"], r["epochs"], r["label"], r["loss"]), []).append(r)
    out = []
    for (eps, epochs, arm, loss), rs in groups.items():
        row: dict[str, Any] = {"eps": eps, "epochs": epochs, "arm": arm, "loss": loss, "seeds": len(rs)}
        for m in METRICS:
            values = [r[m] for r in rs if m in r]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                row[m], row[f"{m}_std"] = float(np.mean(values)), std
        out.append(row)
    return out


def markdown(arch: str, rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
    cell = lambda r, m: f"{r[m]:.3g} ± {r[m + '_std']:.2g}" if m in r else "-"
    head = ["ε", "epochs", "net (arm)", "loss", "seeds", *METRICS]
    lines = [f"# The certified losses at the converged nets ({arch})", "",
             "Validation images; mean ± std over seeds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["eps"], r["epochs"], r["loss"], r["arm"])):
        lines.append(f"| {r['eps']:g} | {r['epochs']:g} | {r['arm']} | {r['loss']} | {r['seeds']} | "
                     + " | ".join(cell(r, m) for m in METRICS) + " |")  # fmt: skip
    lines += ["", "Paired per seed, arm − IBP-trained net, same loss (mean ± s.e.):", "",
              "| ε | epochs | loss | arm | metric | seeds | Δ |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in pairs:
        lines.append(f"| {p['eps']:g} | {p['epochs']:g} | {p['loss']} | {p['arm']} | {p['metric']} | {p['seeds']} | "
                     f"{p['diff']:.3g} ± {p['se']:.2g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def selected(rows: list[dict[str, Any]], arch: str, arms: list[str]) -> list[dict[str, Any]]:
    """The campaign rows of ``arch`` whose arm (``arm@warm`` for a warm start) is one of ``arms``."""
    from campaign import arm_name

    return [r for r in rows if r.get("arch", "cnn3") == arch and arm_name(r) in arms]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    setting = SETTINGS["quick" if args.quick else "default"]
    rows = selected(json.loads((args.campaign / "rows.json").read_text()), args.arch, args.arms)
    rows = [r for r in rows if args.epochs is None or r["epochs"] == args.epochs]
    path = args.out / "analysis.json"
    results = json.loads(path.read_text()) if path.is_file() else []
    from tqdm import tqdm

    for row in tqdm(rows, desc=f"analysing {args.arch} nets", unit="net"):
        done = {(r["run"], r["loss"]) for r in results}
        new = analyse_run(row, args.runs, args.losses, args.batch, setting, done)
        if new:
            results = [r for r in results if (r["run"], r["loss"]) not in {(n["run"], n["loss"]) for n in new}] + new
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
    mine = [r for r in results if r["run"] in {row["run"] for row in rows}]
    text = markdown(args.arch, summary(mine), paired_against(mine))
    (args.out / f"analysis_{args.arch}.md").write_text(text)
    print(text)
    return mine


if __name__ == "__main__":
    main()
