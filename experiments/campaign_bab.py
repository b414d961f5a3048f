"""The campaign's nets certified by the strongest verifier the project has: branch and bound after the cascade.

``experiments/campaign.py`` certifies each finished net once on the test split with the incomplete cascade
(IBP → CROWN-IBP → CROWN → alpha-CROWN after PGD and APGD-CE). This script certifies the same final weights
again, with the same cascade, attacks and seed, and then runs branch and bound (:mod:`jaxcert.bab`:
ReLU splits bounded by CROWN, an attack from every domain's bound minimiser) on every example the cascade left
open, for at most ``--bab-timeout`` seconds each (optionally the exact MILP on what it leaves at timeout,
``--milp``). Every example ends verified, falsified, or open (timeout / unknown), so

    cert_bab_acc   = verified by the cascade or by branch and bound          (a lower bound of the
    robust_bab_acc = not falsified by any attack, branch and bound's included  robust accuracy; and an
    open_bab_acc   = robust_bab_acc − cert_bab_acc                           upper bound of it)

and ``open_bab_acc = 0`` means the net's exact robust accuracy at ε is known. The cascade's states are the same
as the campaign's (same stages, seed and attack settings), so ``cert_bab_acc ≥ cert_acc`` and
``robust_bab_acc ≤ robust_acc``.

Results go to ``<campaign>/bab.json`` (one record per run, saved as each completes; a rerun skips the runs
already certified with the same settings), never into ``rows.json`` (which the campaign's own commands write
while this runs). The campaign's report (``campaign.md``) reads them: columns "cert (BaB) %" and "open after
BaB %", and the paired verdicts on ``cert_bab_acc`` where both arms' nets have it.

    python experiments/campaign_bab.py --arch mlp_14x14 --arms ibp,crown-ibp,deeppoly
    python experiments/campaign_bab.py --quick --campaign /tmp/campaign --runs /tmp/runs   # tests
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import campaign
from campaign import CASCADE, SETTINGS, save_row


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default=None, help="only the runs of this architecture (default: every run)")
    p.add_argument("--arms", default=None, help="comma list of arms (arm or arm@warm; default: every arm)")
    p.add_argument("--bab-timeout", type=float, default=10.0, help="seconds of branch and bound per open example")
    p.add_argument(
        "--max-open",
        type=int,
        default=None,
        help="skip a net whose campaign row leaves more open examples than this (robust − certified)",
    )
    p.add_argument("--milp", action="store_true", help="the exact MILP on what branch and bound leaves at timeout")
    p.add_argument("--milp-time-limit", type=float, default=30.0, help="seconds per example of the MILP")
    p.add_argument("--campaign", type=Path, default=campaign.RESULTS_DIR / "campaign", help="the campaign's --out")
    p.add_argument("--runs", type=Path, default=Path("runs/campaign"), help="the campaign's run folders")
    p.add_argument("--quick", action="store_true", help="the quick campaign's test split (tests)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not (args.bab_timeout > 0 and args.milp_time_limit > 0):
        p.error("--bab-timeout and --milp-time-limit must be > 0 seconds")
    if args.max_open is not None and args.max_open < 0:
        p.error(f"--max-open must be >= 0, got {args.max_open}")
    if not (args.campaign / "rows.json").is_file():
        p.error(f"{args.campaign / 'rows.json'} does not exist: run experiments/campaign.py first")
    args.arms = None if args.arms is None else {a.strip() for a in args.arms.split(",") if a.strip()}
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What decides a record's numbers: a record made with other settings is certified again."""
    return {"cascade": list(CASCADE), "bab_timeout": args.bab_timeout,
            "milp_time_limit": args.milp_time_limit if args.milp else None}  # fmt: skip


def selected(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The campaign rows to certify: of ``--arch`` and ``--arms``, leaving at most ``--max-open`` examples
    open (by their campaign certification)."""
    chosen = [r for r in rows if args.arch in (None, r.get("arch", "cnn3"))
              and (args.arms is None or campaign.arm_name(r) in args.arms)]  # fmt: skip
    if args.max_open is None:
        return chosen
    return [r for r in chosen if round((r["robust_acc"] - r["cert_acc"]) * r["test_examples"]) <= args.max_open]


def certify_row(row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Certify ``row``'s final weights with the campaign's cascade and attacks, then branch and bound."""
    from jaxcert.bab import BabOptions
    from jaxcert.runs import load_run

    setting = SETTINGS["quick" if args.quick else "default"]
    arch, params, config = load_run(args.runs / row["run"])
    cert = campaign.certify_test_split(
        config, arch, params, row["eps"], row["seed"], setting, not args.no_progress,
        bab=BabOptions(timeout=args.bab_timeout), milp=args.milp, milp_time_limit=args.milp_time_limit,
    )  # fmt: skip
    acc, counts = cert.accuracies(), cert.counts()
    return {
        "run": row["run"], "settings": settings(args), "test_examples": cert.n,
        "cert_bab_acc": acc["cert_acc"], "robust_bab_acc": acc["robust_acc"],
        "open_bab_acc": acc["robust_acc"] - acc["cert_acc"], "cascade_cert_acc": acc[f"cert_acc/{CASCADE[-1]}"],
        "counts": counts, "seconds": cert.seconds,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    path = args.campaign / "bab.json"
    done = {r["run"] for r in campaign._load(path) if r["settings"] == settings(args)}
    todo = [r for r in selected(campaign._load(args.campaign / "rows.json"), args) if r["run"] not in done]
    print(f"branch and bound on {len(todo)} nets ({len(done)} already done with these settings)", flush=True)
    records = campaign._load(path)
    for i, row in enumerate(todo, 1):
        began = time.time()
        record = certify_row(row, args)
        record["wall_seconds"] = time.time() - began
        records = save_row(path, record)
        campaign.report(campaign._load(args.campaign / "rows.json"), args.campaign)
        print(f"[{i}/{len(todo)}] {row['run']}: cert {100 * row['cert_acc']:.2f}% → {100 * record['cert_bab_acc']:.2f}%"
              f", robust {100 * row['robust_acc']:.2f}% → {100 * record['robust_bab_acc']:.2f}%, open "
              f"{100 * record['open_bab_acc']:.2f}% ({record['wall_seconds']:.0f} s)", flush=True)  # fmt: skip
    return records


if __name__ == "__main__":
    main()
