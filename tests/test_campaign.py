"""The converged-budget campaign (experiments/campaign.py): resumable rows, plateau and paired verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))

import campaign

SCRIPT = Path(campaign.__file__)


def test_paired_differences_are_per_seed_and_the_verdict_needs_two_standard_errors():
    rows = [{"arm": arm, "seed": s, "eps": 0.1, "cert_acc": v}
            for arm, values in (("ibp", (0.70, 0.60, 0.50)), ("crown-ibp", (0.72, 0.61, 0.53)))
            for s, v in enumerate(values)]  # fmt: skip
    c = campaign.paired(rows, "crown-ibp", "ibp", 0.1)
    d = np.array([0.02, 0.01, 0.03])
    assert c["seeds"] == [0, 1, 2] and c["diff"] == pytest.approx(d.mean())
    assert c["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    # unpaired, the seeds' spread (±0.1) would hide the +2 points; paired, it is 3.5 standard errors
    assert c["verdict"] == "crown-ibp > ibp"
    rows[3]["cert_acc"] = 0.60  # seed 0 now favours ibp by 10 points: no consistent difference
    assert campaign.paired(rows, "crown-ibp", "ibp", 0.1)["verdict"] == "no difference shown"
    assert campaign.paired(rows[:1] + rows[3:4], "crown-ibp", "ibp", 0.1)["verdict"] == "not enough seeds (1)"
    assert campaign.paired(rows, "crown-ibp", "ibp", 0.2) is None


def test_plateau_is_the_first_validation_point_within_half_a_point_of_the_best():
    values = [0.30, 0.50, 0.60, 0.612, 0.615, 0.610]
    records = [{"step": 10 * (i + 1), "epoch": i, "val_cert_acc": v} for i, v in enumerate(values)]
    records.insert(2, {"step": 25, "epoch": 1, "loss": 1.0})  # training records are ignored
    p = campaign.plateau(records)
    assert p["val_cert_acc_best"] == 0.615 and p["plateau_epoch"] == 3 and p["val_cert_acc_final"] == 0.610
    assert p["val_cert_acc_gain"] == pytest.approx(0.610 - 0.612)  # the last third: steps 40..60
    assert campaign.plateau([{"step": 1, "epoch": 0, "loss": 1.0}]) == {}


def test_arm_configs_hold_out_the_validation_split_and_scale_the_recipe_to_the_epochs():
    setting = campaign.SETTINGS["default"]
    config = campaign.arm_config("crown-ibp", 0.1, 20, 2, setting, Path("runs/x"))
    assert config.steps == round(20 * (60000 - 5000) / 128) and config.val_size == 5000 and config.seed == 2
    assert config.relaxation == "crown-ibp" and config.beta_final == 1.0 and config.test_limit is None
    assert config.out == "runs/x/crown-ibp-eps0.1-e20-s2" and config.val_every == config.steps // 10


@pytest.mark.slow
def test_the_quick_campaign_runs_certifies_and_resumes_without_retraining(tmp_path):
    def cmd(seeds: int) -> list[str]:
        return [sys.executable, str(SCRIPT), "--quick", "--epochs", "1", "--seeds", str(seeds), "--arms", "ibp",
                "--no-progress", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]  # fmt: skip

    first = subprocess.run(cmd(1), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert [r["run"] for r in rows] == ["ibp-eps0.1-e1-s0"]
    row = rows[0]
    assert row["test_examples"] == 64 and 0 <= row["cert_acc"] <= row["robust_acc"] <= row["clean_acc"] <= 1
    assert row["val_curve"] and row["val_curve"][-1][0] == row["steps"]  # validated at the end
    metrics = [json.loads(line) for line in (tmp_path / "runs" / row["run"] / "metrics.jsonl").read_text().splitlines()]
    assert any("val_cert_acc/ibp" in r for r in metrics)
    second = subprocess.run(cmd(2), capture_output=True, text=True, timeout=600)  # two seeds: seed 0 is kept
    assert second.returncode == 0, second.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert [r["run"] for r in rows] == ["ibp-eps0.1-e1-s0", "ibp-eps0.1-e1-s1"] and rows[0] == row
    assert "resumed" not in second.stdout.split("ibp-eps0.1-e1-s1")[0]  # seed 0 neither retrained nor resumed
    text = (tmp_path / "out" / "campaign.md").read_text()
    assert "| ibp | 0.1 | 1 | 2 |" in text and (tmp_path / "out" / "campaign_val.png").stat().st_size > 0
    assert "git_commit" in json.loads((tmp_path / "out" / "campaign.json").read_text())["provenance"]


def test_rows_saved_side_by_side_are_merged_and_a_rerun_row_replaces_its_old_one(tmp_path):
    path = tmp_path / "rows.json"
    campaign.save_row(path, {"run": "a", "cert_acc": 0.1})
    campaign.save_row(path, {"run": "b", "cert_acc": 0.2})  # another command, same file
    rows = campaign.save_row(path, {"run": "a", "cert_acc": 0.3})
    assert rows == json.loads(path.read_text()) == [{"run": "b", "cert_acc": 0.2}, {"run": "a", "cert_acc": 0.3}]
