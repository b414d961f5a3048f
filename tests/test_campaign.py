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


def test_run_ids_keep_the_cnn3_names_and_name_the_net_the_warm_start_and_the_tuned_fields():
    assert campaign.run_id("ibp", 0.1, 20, 0) == "ibp-eps0.1-e20-s0"  # the committed rows keep their runs
    tuned = {"sigma_rel": 0.05, "lr": 0.003}
    assert (campaign.run_id("rgs-deeppoly", 0.1, 20, 1, arch="mlp_small", overrides=tuned, warm="ibp")
            == "mlp_small-rgs-deeppoly@ibp-eps0.1-e20-s1-lr0.003-sr0.05")  # fmt: skip
    setting = campaign.SETTINGS["default"]
    config = campaign.arm_config("pgpe-deeppoly", 0.1, 20, 1, setting, Path("r"), arch="mlp_small", overrides=tuned,
                                 warm="ibp", val_relaxations=("crown",))  # fmt: skip
    assert (config.method, config.relaxation, config.lr, config.sigma_rel) == ("pgpe", "deeppoly", 0.003, 0.05)
    assert config.init_from == str(Path("r") / "mlp_small-ibp-eps0.1-e20-s1") and config.ramp_frac == 0.0
    assert config.warmup_frac == 0.0 and config.val_relaxations == ("crown",) and config.arch == "mlp_small"


def test_every_arm_family_gets_the_same_tuning_effort():
    assert {campaign.family(arm) for arm in campaign.ARMS} <= set(campaign.TUNING)
    assert {len(candidates) for candidates in campaign.TUNING.values()} == {4}
    assert campaign.family("rgs-crown-ibp") == "rgs" and campaign.family("deeppoly") == "certified"
    assert campaign.family("mtl-ibp") == "mtl-ibp"


def test_warm_starts_get_the_same_effort_from_their_own_grid_and_start_from_the_tuned_warm_run(tmp_path):
    assert {f: len(c) for f, c in campaign.WARM_TUNING.items()} == {f: len(c) for f, c in campaign.TUNING.items()}
    assert max(c["lr"] for c in campaign.grid("deeppoly", "ibp")) < min(c["lr"] for c in campaign.grid("deeppoly"))
    setting = campaign.SETTINGS["quick"]
    config = campaign.arm_config("deeppoly", 0.1, 2, 3, setting, tmp_path, arch="mlp_14x14", warm="ibp",
                                 warm_overrides={"lr": 0.004}, overrides={"lr": 2e-4})  # fmt: skip
    assert Path(config.init_from).name == "mlp_14x14-ibp-eps0.1-e20-s3-lr0.004"
    assert Path(config.out).name == "mlp_14x14-deeppoly@ibp-eps0.1-e2-s3-lr0.0002"
    assert config.warmup_frac == 0.0 and config.ramp_frac == 0.0
    with pytest.raises(SystemExit, match="has not finished"):  # the warm run has no row yet: one line, no training
        campaign._check_start(config, tmp_path)
    (tmp_path / "tuning.json").write_text(json.dumps([{"run": "mlp_14x14-ibp-eps0.1-e20-s3-lr0.004"}]))
    campaign._check_start(config, tmp_path)


def test_a_warm_campaign_before_its_warm_runs_exits_with_one_line_before_any_training(tmp_path):
    argv = ["--quick", "--arms", "deeppoly", "--warm-from", "ibp", "--seeds", "1", "--no-progress",
            "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]  # fmt: skip
    for extra in ([], ["--tune"]):
        with pytest.raises(SystemExit, match=r"warm start .*ibp-eps0\.1-e20-s.* has not finished"):
            campaign.main([*argv, *extra])
    assert not (tmp_path / "runs").exists()


def test_pgd_training_is_tuned_for_validation_pgd_accuracy_and_compared_on_clean_and_pgd_accuracy_too(tmp_path):
    records = [
        {"step": 1, "val_cert_acc": 0.1, "val_pgd_acc": 0.5},
        {"step": 2, "val_cert_acc": 0.2, "val_pgd_acc": 0.4},
    ]
    assert campaign.score(records, campaign.SCORE["pgd"]) == 0.4 and campaign.score(records, "missing") is None

    def t(lr: float, cert: float, pgd: float) -> dict:
        return {"arm": "pgd", "arch": "cnn3", "eps": 0.1, "epochs": 20, "warm": None, "overrides": {"lr": lr},
                "val_cert_acc_final": cert, "score_final": pgd}  # fmt: skip

    lrs = [c["lr"] for c in campaign.grid("pgd")]
    tuning = [t(lrs[0], 0.9, 0.1), t(lrs[1], 0.1, 0.9), t(lrs[2], 0.5, 0.5), t(lrs[3], 0.5, 0.5)]
    assert campaign.tuned_choice(tuning, "pgd", "cnn3", 0.1, 20, None) == {"lr": lrs[1]}  # by PGD, not cert.

    def row(arm: str, seed: int, cert: float, clean: float, pgd: float) -> dict:
        return {"arm": arm, "seed": seed, "eps": 0.1, "epochs": 20, "arch": "cnn3", "cert_acc": cert,
                "clean_acc": clean, "pgd_acc": pgd}  # fmt: skip

    rows = [row("ibp", s, 0.6, 0.7, 0.62) for s in range(3)]
    rows += [row("pgd", s, 0.1 + 0.01 * s, 0.8 + 0.01 * s, 0.7) for s in range(3)]
    found = {c["metric"]: c for c in campaign.comparisons(rows)}
    assert set(found) == {"cert_acc", "clean_acc", "pgd_acc"}  # robust_acc: not in these rows
    assert found["clean_acc"]["diff"] == pytest.approx(0.11) and found["clean_acc"]["verdict"] == "pgd > ibp"
    assert found["cert_acc"]["verdict"] == "ibp > pgd"
    assert "| pgd − ibp | clean_acc | cnn3 | 0.1 | 20 | 3 | +11.00 ± 0.58 | pgd > ibp |" in campaign.report(
        rows, tmp_path
    )


def test_pgpe_rows_report_the_population_against_the_number_of_weights(tmp_path):
    params = [{"w": np.zeros((196, 32)), "b": np.zeros(32)}, {"w": np.zeros((32, 10)), "b": np.zeros(10)}]
    setting = campaign.SETTINGS["quick"]
    pgpe = campaign.arm_config("pgpe-deeppoly", 0.1, 1, 0, setting, tmp_path, arch="mlp_14x14")
    d = 196 * 32 + 32 + 32 * 10 + 10
    assert campaign.search_size(pgpe, params) == {"n_params": d, "population": 32, "n_over_d": 32 / d}
    assert campaign.search_size(campaign.arm_config("ibp", 0.1, 1, 0, setting, tmp_path), params) == {"n_params": d}


def test_the_tuned_choice_is_the_best_final_validation_score_once_every_candidate_ran():
    def t(lr: float, score: float, arm: str = "ibp") -> dict:
        return {"arm": arm, "arch": "cnn3", "eps": 0.1, "epochs": 20, "warm": None, "overrides": {"lr": lr},
                "val_cert_acc_final": score}  # fmt: skip

    grid = [c["lr"] for c in campaign.TUNING["certified"]]
    tuning = [t(grid[0], 0.60), t(grid[1], 0.70), t(grid[2], 0.65)]
    tuning.append(t(grid[0] / 7, 0.99))  # a candidate of an earlier grid: never counted, never chosen
    assert campaign.tuned_choice(tuning, "ibp", "cnn3", 0.1, 20, None) is None  # 3 of 4 candidates scored
    tuning.append(t(grid[3], 0.70))
    assert campaign.tuned_choice(tuning, "ibp", "cnn3", 0.1, 20, None) == {"lr": grid[1]}  # a tie: the first
    assert campaign.tuned_choice(tuning, "ibp", "cnn3", 0.2, 20, None) is None  # another setting
    assert campaign.tuned_choice(tuning, "ibp", "cnn3", 0.1, 20, "ibp") is None  # warm starts are tuned apart


def test_smoothed_arms_are_compared_with_ibp_and_with_the_gradient_arm_of_their_own_loss():
    def row(arm: str, seed: int, cert: float, **extra) -> dict:
        return {"arm": arm, "seed": seed, "eps": 0.1, "epochs": 20, "arch": "mlp_small", "cert_acc": cert, **extra}

    rows = [row(arm, s, base + 0.01 * s) for s in range(3)
            for arm, base in (("ibp", 0.5), ("deeppoly", 0.4), ("rgs-deeppoly", 0.45))]  # fmt: skip
    rows += [row("ibp", 0, 0.9, arch="cnn3")]  # another net: never paired with the small net's rows
    pairs = {(c["a"], c["b"]): c for c in campaign.comparisons(rows)}
    assert set(pairs) == {("deeppoly", "ibp"), ("rgs-deeppoly", "ibp"), ("rgs-deeppoly", "deeppoly")}
    assert pairs[("rgs-deeppoly", "deeppoly")]["diff"] == pytest.approx(0.05)
    assert pairs[("rgs-deeppoly", "deeppoly")]["arch"] == "mlp_small"
    assert pairs[("deeppoly", "ibp")]["diff"] == pytest.approx(-0.1)
    # warm starts: the smoothed arm against the gradient arm that started from the same nets, not from scratch
    starts = (("ibp", 0.6), ("deeppoly", 0.55), ("rgs-deeppoly", 0.56), ("pgpe-deeppoly", 0.5))
    warm = [row(arm, s, base + 0.02 * s, warm="ibp", epochs=2) for s in range(3) for arm, base in starts]
    warm_pairs = {(c["a"], c["b"]): c for c in campaign.comparisons(warm + rows)}
    assert ("rgs-deeppoly@ibp", "deeppoly@ibp") in warm_pairs and ("pgpe-deeppoly@ibp", "deeppoly@ibp") in warm_pairs
    assert warm_pairs[("rgs-deeppoly@ibp", "deeppoly@ibp")]["diff"] == pytest.approx(0.01)
    assert ("rgs-deeppoly@ibp", "deeppoly") not in warm_pairs  # another setting (epochs) and another start
    tuned = row("ibp", 0, 0.7, overrides={"lr": 0.002})
    assert (
        campaign.label(tuned) == "ibp (lr=0.002)"
        and campaign.label(row("rgs-ibp", 0, 0.1, warm="ibp")) == "rgs-ibp@ibp"
    )


@pytest.mark.slow
def test_the_quick_tuning_stage_scores_every_candidate_on_validation_and_the_seed_runs_use_the_choice(tmp_path):
    base = [sys.executable, str(SCRIPT), "--quick", "--epochs", "0.5", "--arms", "ibp", "--no-progress",
            "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]  # fmt: skip
    tune = subprocess.run([*base, "--tune"], capture_output=True, text=True, timeout=900)
    assert tune.returncode == 0, tune.stderr[-3000:]
    tuning = json.loads((tmp_path / "out" / "tuning.json").read_text())
    assert sorted(t["overrides"]["lr"] for t in tuning) == sorted(c["lr"] for c in campaign.TUNING["certified"])
    assert all(t["run"].endswith(f"-s{campaign.TUNE_SEED}-lr{t['overrides']['lr']:g}") for t in tuning)
    chosen = campaign.tuned_choice(tuning, "ibp", "cnn3", 0.1, 0.5, None)
    assert f"ibp ε=0.1: {chosen}" in tune.stdout and not (tmp_path / "out" / "rows.json").exists()  # no test images
    seeds = subprocess.run([*base, "--seeds", "1"], capture_output=True, text=True, timeout=900)
    assert seeds.returncode == 0, seeds.stderr[-3000:]
    (row,) = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert row["overrides"] == chosen and row["run"] == campaign.run_id("ibp", 0.1, 0.5, 0, overrides=chosen)


def test_converged_analysis_takes_the_nets_of_the_chosen_arms_and_tells_warm_starts_apart():
    import converged_analysis

    mlp = {"arch": "mlp_14x14"}
    rows = [{"run": "a", "arm": "ibp", **mlp}, {"run": "b", "arm": "pgd", **mlp},
            {"run": "c", "arm": "deeppoly", "warm": "ibp", **mlp}, {"run": "d", "arm": "ibp"}]  # fmt: skip
    pick = lambda arms: [r["run"] for r in converged_analysis.selected(rows, "mlp_14x14", arms)]
    assert pick(["ibp", "deeppoly"]) == ["a"] and pick(["deeppoly@ibp", "pgd"]) == ["b", "c"]


def test_converged_analysis_pairs_each_net_with_the_tuned_ibp_net_of_its_seed_under_the_same_loss():
    import converged_analysis

    def r(arm: str, label: str, seed: int, loss: str, jump: float, warm: str | None = None) -> dict:
        return {"arm": arm, "warm": warm, "label": label, "seed": seed, "eps": 0.1, "epochs": 20, "loss": loss,
                "rel_jump_fine": jump}  # fmt: skip

    results = [r("ibp", "ibp@ibp (lr=0.0008)", s, "ibp", 9.0, warm="ibp") for s in range(3)]  # never the base
    results += [r("ibp", "ibp (lr=0.004)", s, loss, 1.0 + s) for s in range(3) for loss in ("ibp", "deeppoly")]
    results += [
        r("deeppoly", "deeppoly (lr=0.001)", s, loss, 3.0 + 2 * s) for s in range(3) for loss in ("ibp", "deeppoly")
    ]
    found = {
        (p["arm"], p["loss"]): p for p in converged_analysis.paired_against(results) if p["metric"] == "rel_jump_fine"
    }
    assert set(found) == {
        ("deeppoly (lr=0.001)", "ibp"),
        ("deeppoly (lr=0.001)", "deeppoly"),
        ("ibp@ibp (lr=0.0008)", "ibp"),
    }
    assert found[("deeppoly (lr=0.001)", "deeppoly")]["diff"] == pytest.approx(3.0)  # (3−1, 5−2, 7−3)
    assert (
        found[("deeppoly (lr=0.001)", "ibp")]["base"] == "ibp (lr=0.004)"
        and found[("ibp@ibp (lr=0.0008)", "ibp")]["seeds"] == 3
    )


@pytest.mark.slow
def test_converged_analysis_measures_every_loss_at_every_net_and_resumes(tmp_path):
    """Two quick campaign nets (IBP- and DeepPoly-trained), each measured under both losses on validation
    images: the DeepPoly loss is exactly as tight as the quick reference (CROWN), the paired table compares
    the DeepPoly-trained net with the IBP-trained one, and a rerun computes nothing."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    train = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--arch", "mlp_14x14", "--epochs", "0.5", "--arms", "ibp,deeppoly",
         "--seeds", "1", "--no-progress", "--out", str(out), "--runs", str(runs)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    analysis = [sys.executable, str(SCRIPT.parent / "converged_analysis.py"), "--quick", "--campaign", str(out),
                "--runs", str(runs), "--losses", "ibp,deeppoly", "--batch", "4"]  # fmt: skip
    first = subprocess.run(analysis, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "analysis.json").read_text())
    assert sorted((r["arm"], r["loss"]) for r in results) == [
        ("deeppoly", "deeppoly"), ("deeppoly", "ibp"), ("ibp", "deeppoly"), ("ibp", "ibp")]  # fmt: skip
    for r in results:
        if r["loss"] == "deeppoly":  # its own reference: ρ = 1
            assert r["tightness"] == pytest.approx(1.0, abs=1e-4)
        assert 0 < r["tightness"] < np.inf
        assert np.isfinite(r["grad_norm"]) and r["sens_1e-2"] >= 0
    table = (out / "analysis_mlp_14x14.md").read_text()
    assert "| 0.1 | 0.5 | deeppoly | deeppoly | tightness | 1 |" in table
    again = subprocess.run(analysis, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and json.loads((out / "analysis.json").read_text()) == results
    bad = subprocess.run([*analysis[:2], "--campaign", str(tmp_path / "none")], capture_output=True, text=True)
    assert bad.returncode == 2 and "run experiments/campaign.py first" in bad.stderr.strip().splitlines()[-1]
