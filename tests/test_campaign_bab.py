"""Branch and bound on the campaign's nets (experiments/campaign_bab.py) and its place in the campaign report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))

import campaign
import campaign_bab

SCRIPT = Path(campaign_bab.__file__)


def _row(run: str, arm: str, seed: int, cert: float, robust: float, **extra) -> dict:
    return {"run": run, "arm": arm, "seed": seed, "eps": 0.1, "epochs": 20, "arch": "mlp_small", "cert_acc": cert,
            "robust_acc": robust, "test_examples": 1000, **extra}  # fmt: skip


def test_the_report_pairs_arms_on_the_branch_and_bound_accuracy_only_where_both_nets_have_it():
    rows = [_row(f"{arm}-s{s}", arm, s, base + 0.01 * s, base + 0.05) for s in range(3)
            for arm, base in (("ibp", 0.5), ("deeppoly", 0.4))]  # fmt: skip
    records = [{"run": f"{arm}-s{s}", "cert_bab_acc": base + 0.02 * s, "robust_bab_acc": base + 0.03,
                "open_bab_acc": 0.03 - 0.02 * s}
               for s in range(3) for arm, base in (("ibp", 0.52), ("deeppoly", 0.41))]  # fmt: skip
    merged = campaign.with_bab(rows, records[:-1])  # the last net (deeppoly, seed 2) not yet certified
    assert merged[0]["cert_bab_acc"] == 0.52 and "cert_bab_acc" not in merged[-1] and merged[-1] == rows[-1]
    pairs = {(c["a"], c["b"], c["metric"]): c for c in campaign.comparisons(merged)}
    assert pairs[("deeppoly", "ibp", "cert_acc")]["seeds"] == [0, 1, 2]
    bab = pairs[("deeppoly", "ibp", "cert_bab_acc")]
    assert bab["seeds"] == [0, 1] and bab["diff"] == pytest.approx(0.41 - 0.52)
    assert bab["verdict"] == "not enough seeds (2)"


def test_nets_are_chosen_by_architecture_arm_and_how_many_examples_the_cascade_left_open(tmp_path):
    (tmp_path / "rows.json").write_text("[]")
    rows = [_row("a", "ibp", 0, 0.60, 0.61), _row("b", "pgd", 0, 0.40, 0.60),
            _row("c", "ibp", 0, 0.6, 0.6, arch="cnn3"), _row("d", "deeppoly", 0, 0.5, 0.52, warm="ibp")]  # fmt: skip

    def runs(*argv: str) -> list[str]:
        args = campaign_bab.parse(["--campaign", str(tmp_path), *argv])
        return [r["run"] for r in campaign_bab.selected(rows, args)]

    assert runs() == ["a", "b", "c", "d"]
    assert runs("--arch", "mlp_small") == ["a", "b", "d"]
    assert runs("--arms", "ibp,deeppoly@ibp") == ["a", "c", "d"]
    assert runs("--max-open", "10") == ["a", "c"]  # 10 and 0 open of 1000; b leaves 200, d 20


@pytest.mark.parametrize("argv", [["--bab-timeout", "0"], ["--max-open", "-1"], ["--campaign", "/nonexistent"]])
def test_bad_settings_are_one_line_errors_before_any_work(argv, tmp_path, capsys):
    (tmp_path / "rows.json").write_text("[]")
    with pytest.raises(SystemExit) as exc:
        campaign_bab.parse(["--campaign", str(tmp_path), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--bab-timeout" in err or "--max-open" in err or "rows.json" in err


@pytest.mark.slow
def test_branch_and_bound_settles_the_quick_campaigns_open_examples_and_resumes(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    trained = subprocess.run(
        [sys.executable, str(Path(campaign.__file__)), "--quick", "--epochs", "1", "--seeds", "1", "--arms", "ibp",
         "--no-progress", "--out", str(out), "--runs", str(runs)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    cmd = [sys.executable, str(SCRIPT), "--quick", "--no-progress", "--campaign", str(out), "--runs", str(runs),
           "--bab-timeout", "5"]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    row = json.loads((out / "rows.json").read_text())[0]
    (record,) = json.loads((out / "bab.json").read_text())
    assert record["run"] == row["run"] and record["test_examples"] == row["test_examples"] == 64
    assert sum(record["counts"].values()) == 64
    # the same cascade and attacks as the campaign's certification, then branch and bound on what they left
    assert record["cascade_cert_acc"] == row["cert_acc"]
    assert row["cert_acc"] <= record["cert_bab_acc"] <= record["robust_bab_acc"] <= row["robust_acc"]
    assert record["open_bab_acc"] == pytest.approx(record["robust_bab_acc"] - record["cert_bab_acc"])
    assert row["robust_acc"] > row["cert_acc"], "the quick net leaves nothing open: the test checks nothing"
    assert record["open_bab_acc"] < row["robust_acc"] - row["cert_acc"]  # branch and bound settled some
    assert "cert (BaB) %" in (out / "campaign.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "on 0 nets (1 already done" in again.stdout
