"""Wall time and peak memory of ``python -m jaxcert.certify`` on a saved run, several checkouts side by side.

Each checkout (a folder holding a ``jaxcert`` package, e.g. this repository and a ``git worktree`` of an
older commit) certifies the same run folder in its own process (``PYTHONPATH=<checkout>``), one after the
other, ``--repeats`` rounds alternating; a round's figures are the child's wall time (start to exit, JAX
import and compilation included: what a user waits for) and its peak resident memory (``ru_maxrss`` from
``wait4``). Each report goes to a scratch folder (a copy of the run's ``config.json`` and
``checkpoints/``), so the run itself is never written to. Prints a markdown table with the ratio to the
first checkout and writes JSON (``--out``).

    git worktree add /tmp/jaxcert-before <commit>
    python experiments/bench_certify.py runs/quickstart --checkouts .,/tmp/jaxcert-before
    python experiments/bench_certify.py runs/quickstart --checkouts . --limit 1000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jaxcert.provenance import git_state, provenance

MiB = 2**20


def git_commit(checkout: Path) -> str:
    """The short commit of ``checkout`` (with ``+`` if a tracked file differs from it), or ``"?"`` outside git."""
    commit, dirty = git_state(checkout)
    return "?" if commit is None else commit + ("+" if dirty else "")


def scratch_run(run_dir: Path, into: Path) -> Path:
    """A copy of the files ``jaxcert.certify`` reads from ``run_dir`` (config and checkpoints) in ``into``."""
    shutil.copy2(run_dir / "config.json", into / "config.json")
    shutil.copytree(run_dir / "checkpoints", into / "checkpoints")
    return into


def certify_once(checkout: Path, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    """One ``python -m jaxcert.certify`` of ``run_dir`` with ``checkout``'s package: wall seconds, peak MiB and
    the certified accuracy it reported."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = scratch_run(run_dir, Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
        cmd = [sys.executable, "-m", "jaxcert.certify", str(scratch), "--no-progress", *extra]
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = proc.stdout.read().decode() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{checkout}: certify failed:\n{output[-2000:]}")
        reports = sorted(scratch.glob("certify*.json"))
        summary = json.loads(reports[-1].read_text())["summary"]
    return {"seconds": wall, "peak_mib": usage.ru_maxrss / 1024, "cert_acc": summary["cert_acc"],
            "examples": summary["examples"], "clean_acc": summary["clean_acc"]}  # fmt: skip


def markdown_table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["seconds"]
    lines = ["| checkout | commit | examples | wall s (best) | speed-up vs first | peak MiB | clean % | cert % |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['checkout']} | {r['commit']} | {r['examples']} | {r['seconds']:.1f} | {base / r['seconds']:.2f}× "
            f"| {r['peak_mib']:.0f} | {100 * r['clean_acc']:.2f} | {100 * r['cert_acc']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a training run folder")
    p.add_argument("--checkouts", default=".", help="comma list of folders holding a jaxcert package")
    p.add_argument("--limit", type=int, help="certify the first N test examples (default: the whole split)")
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best of each is reported")
    p.add_argument("--out", type=Path, default=Path("experiments/results/bench_certify.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not (args.run_dir / "config.json").is_file():
        raise SystemExit(f"error: {args.run_dir} is not a training run folder (no config.json)")
    checkouts = [Path(c) for c in args.checkouts.split(",") if c]
    extra = [] if args.limit is None else ["--limit", str(args.limit)]
    commits = {c: git_commit(c) for c in checkouts}  # before the rounds: the code that runs
    best: dict[Path, dict[str, Any]] = {}
    for round_ in range(args.repeats):
        for checkout in checkouts:
            result = certify_once(checkout, args.run_dir, extra)
            print(
                f"round {round_ + 1}, {checkout}: {result['seconds']:.1f} s, {result['peak_mib']:.0f} MiB", flush=True
            )
            if checkout not in best or result["seconds"] < best[checkout]["seconds"]:
                best[checkout] = result
    rows = [{"checkout": str(c), "commit": commits[c], **best[c]} for c in checkouts]
    table = markdown_table(rows)
    print(table)
    out = {"rows": rows, "run_dir": str(args.run_dir), "limit": args.limit, "repeats": args.repeats,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg()},
           "table": table, "provenance": provenance()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
