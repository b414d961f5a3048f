"""The research experiment scripts run end to end in their ``--quick`` setting and write consistent results.

The scripts run concurrently in subprocesses (one module-scoped fixture), each writing
``<name>.json`` and ``<name>.md`` into a temporary directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SCRIPTS = ("paradox", "gls_vs_ibp", "robust_vs_certified", "tune_pgpe", "pgpe_study")
TOL = 1e-9


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("experiments")
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--quick", "--no-progress", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in SCRIPTS
    }
    logs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name}.py --quick failed:\n{logs[name][-3000:]}"
    loaded = {}
    for name in SCRIPTS:
        loaded[name] = json.loads((out / f"{name}.json").read_text())
        loaded[name]["markdown"] = (out / f"{name}.md").read_text()
        loaded[name]["stdout"] = logs[name]
        loaded[name]["out"] = out
    return loaded


def check_table(record: dict) -> None:
    """The markdown file holds a header, a separator and one line per row (per summary row where the
    script aggregates seeds), and is also printed."""
    lines = record["markdown"].strip().splitlines()
    assert len(lines) == 2 + len(record.get("summary", record["rows"]))
    assert lines[0].startswith("| ") and lines[1].startswith("|---")
    assert record["markdown"].strip() in record["stdout"]


def check_accuracy_chain(row: dict, relaxations: tuple[str, ...]) -> None:
    """Per example cert ⇒ PGD-robust ⇒ clean, so the means are ordered; 'any' is the union of verifiers."""
    certs = [row[f"cert_acc/{r}"] for r in relaxations]
    for value in (row["clean_acc"], row["pgd_acc"], *certs, row["cert_acc/any"]):
        assert 0.0 <= value <= 1.0
    assert row["cert_acc/any"] <= row["pgd_acc"] + TOL <= row["clean_acc"] + 2 * TOL
    assert row["cert_acc/any"] + TOL >= max(certs)


def check_cascade(row: dict, cascade: list[str]) -> None:
    """A certify cascade: cert ⇒ not falsified ⇒ PGD-robust ⇒ clean, per example, so the means are ordered;
    the cumulative ``cert_acc/<r>`` grow along the cascade and end at ``cert_acc``."""
    assert 0.0 <= row["cert_acc"] <= row["robust_acc"] + TOL <= row["pgd_acc"] + 2 * TOL <= row["clean_acc"] + 3 * TOL
    stages = [row[f"cert_acc/{r}"] for r in cascade]
    assert stages == sorted(stages) and stages[-1] == pytest.approx(row["cert_acc"])
    assert row["certify_seconds"] > 0


def check_summary(record: dict, group: tuple[str, ...], metric: str) -> None:
    """Each summary row is the mean ± std of its group's per-seed runs."""
    for agg in record["summary"]:
        values = [r[metric] for r in record["rows"] if all(r[g] == agg[g] for g in group)]
        assert agg["seeds"] == len(values) == len(record["settings"]["seeds"])
        assert agg[metric] == pytest.approx(np.mean(values)) and agg[f"{metric}_std"] == pytest.approx(np.std(values))


@pytest.mark.slow
def test_paradox_rows(results: dict[str, dict]) -> None:
    record = results["paradox"]
    rows, settings = record["rows"], record["settings"]
    assert settings["arch"] == "cnn3" and settings["eps"] == [0.1]
    assert [(r["relaxation"], r["eps"]) for r in rows] == [("ibp", 0.1), ("crown", 0.1)]
    for row in rows:
        check_cascade(row, settings["cascade"])
        for key in ("sens_1e-3", "sens_1e-2", "grad_norm"):
            assert np.isfinite(row[key]) and row[key] >= 0, key
        assert -1.0 - TOL <= row["min_cosine"] <= 1.0 + TOL
        assert row["unstable_ibp"] >= 0
        assert row["cert_loss"] > 0  # the certified cross-entropy is strictly positive
    # The quick reference verifier is CROWN itself, so CROWN's own tightness is exactly 1.
    assert rows[1]["tightness"] == pytest.approx(1.0, rel=1e-5)
    check_summary(record, ("relaxation", "eps"), "cert_acc")
    assert [f["claim"] for f in record["findings"]] == ["cert(IBP-trained) > cert(crown-trained)"]
    assert {"jaxcert", "jax", "git_commit"} <= set(record["provenance"])  # versions and commit recorded
    check_table(record)


@pytest.mark.slow
def test_gls_vs_ibp_rows(results: dict[str, dict]) -> None:
    record = results["gls_vs_ibp"]
    rows, settings = record["rows"], record["settings"]
    expected = [("certified", "ibp"), ("rgs", "deeppoly"), ("pgpe", "deeppoly")]
    assert [(r["method"], r["relaxation"]) for r in rows] == expected
    for row in rows:
        check_cascade(row, settings["cascade"])
        assert np.isfinite(row["train_loss"]) and row["train_seconds"] > 0
    check_summary(record, ("method", "relaxation", "eps"), "cert_acc")
    claims = [f["claim"] for f in record["findings"]]
    assert claims == ["cert(RGS-deeppoly) > cert(gradient IBP)", "cert(PGPE-deeppoly) > cert(gradient IBP)"]
    for finding in record["findings"]:
        assert finding["diff"] == pytest.approx(
            rows[claims.index(finding["claim"]) + 1]["cert_acc"] - rows[0]["cert_acc"]
        )
    check_table(record)


@pytest.mark.slow
def test_an_interrupted_run_is_reported_from_its_partial_rows(results: dict[str, dict], tmp_path: Path) -> None:
    for name in ("paradox", "gls_vs_ibp"):
        partial = results[name]["out"] / f"{name}.partial.json"
        (tmp_path / partial.name).write_text(partial.read_text())
        cmd = [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--quick", "--from-partial", "--out", str(tmp_path)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        rebuilt = json.loads((tmp_path / f"{name}.json").read_text())
        assert rebuilt["summary"] == results[name]["summary"] and rebuilt["findings"] == results[name]["findings"]
        assert (tmp_path / f"{name}.md").read_text() == results[name]["markdown"]
    with pytest.raises(subprocess.CalledProcessError) as missing:
        cmd = [
            sys.executable,
            str(EXPERIMENTS / "paradox.py"),
            "--quick",
            "--from-partial",
            "--out",
            str(tmp_path / "x"),
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    assert "no partial results" in missing.value.stderr


@pytest.mark.slow
def test_robust_vs_certified_rows(results: dict[str, dict]) -> None:
    record = results["robust_vs_certified"]
    rows = record["rows"]
    expected = [(d, m) for d in ("spheres", "fashion_mnist") for m in ("standard", "pgd", "ibp", "crown-ibp")]
    assert [(r["dataset"], r["training"]) for r in rows] == expected
    for row in rows:
        # cert ⇒ robust ⇒ correct example by example, so the errors are ordered the other way.
        assert 0.0 <= row["std_err"] <= row["pgd_err"] + TOL <= row["cert_err"] + 2 * TOL <= 1.0 + 3 * TOL
        assert row["unstable"] >= 0
    spheres = [r for r in rows if r["dataset"] == "spheres"]
    assert all(r["eps"] == 0.02 for r in spheres)
    assert record["settings"]["spheres_l2_margin"] == pytest.approx(0.15)
    check_table(record)


@pytest.mark.slow
def test_tune_pgpe_rows(results: dict[str, dict]) -> None:
    record = results["tune_pgpe"]
    rows, settings = record["rows"], record["settings"]
    assert [(r["lr"], r["sigma"]) for r in rows] == [(lr, s) for lr in settings["lr"] for s in settings["sigma"]]
    for row in rows:
        check_accuracy_chain(row, ("ibp",))
    best = max(rows, key=lambda r: (r["cert_acc/ibp"], r["clean_acc"]))
    assert settings["best"] == {"lr": best["lr"], "sigma": best["sigma"]}
    assert settings["relaxation"] == "ibp" and settings["validation"] > 0
    check_table(record)


@pytest.mark.slow
def test_pgpe_study_rows(results: dict[str, dict]) -> None:
    record = results["pgpe_study"]
    runs, summary, settings = record["rows"], record["summary"], record["settings"]
    labels = [r["label"] for r in settings["rows"]]
    assert [r["label"] for r in summary] == labels
    assert any(r.get("warm") for r in settings["rows"]) and settings["rows"][0]["method"] == "certified"
    for row in runs:
        assert 0.0 <= row["val_cert_acc"] <= row["val_clean_acc"] + TOL <= 1.0 + TOL  # certified ⇒ correct
        assert np.isfinite(row["train_loss_at_mean"]) and row["train_seconds"] > 0
    for label, agg in zip(labels, summary, strict=True):
        values = [r["val_cert_acc"] for r in runs if r["label"] == label]
        assert agg["seeds"] == len(values) > 0
        assert agg["val_cert_acc"] == pytest.approx(np.mean(values)) and agg["val_cert_acc_std"] >= 0
    check_table(record)


@pytest.mark.slow
def test_validation_images_follow_the_training_subset() -> None:
    sys.path.insert(0, str(EXPERIMENTS))
    from tune_pgpe import train_validation_split

    from jaxcert.data import load_dataset

    train, val = train_validation_split(20, 10, factor=1)
    full = load_dataset("fashion_mnist", "train", limit=30)
    np.testing.assert_array_equal(train.x, full.x[:20])
    np.testing.assert_array_equal(val.x, full.x[20:])  # disjoint from the training images
    with pytest.raises(ValueError, match="need"):
        train_validation_split(60_000, 10, factor=1)


def test_downsample_keeps_the_data_range_and_rejects_bad_factors() -> None:
    sys.path.insert(0, str(EXPERIMENTS))
    from common import downsample

    from jaxcert.data import Dataset

    rng = np.random.default_rng(0)
    ds = Dataset(x=rng.random((3, 4, 4, 1)), y=np.array([0, 1, 2]), num_classes=3, name="toy", normalization="mnist")
    small = downsample(ds, 2)
    assert small.x.shape == (3, 2, 2, 1)
    np.testing.assert_allclose(small.x[:, 0, 0, 0], ds.x[:, :2, :2, 0].mean(axis=(1, 2)), rtol=1e-6)
    assert small.x.min() >= 0 and small.x.max() <= 1
    with pytest.raises(ValueError, match="not divisible"):
        downsample(ds, 3)


def test_pgpe_study_row_selection_keeps_the_warm_start_source() -> None:
    sys.path.insert(0, str(EXPERIMENTS))
    from pgpe_study import ROWS, select_rows

    rows = ROWS["default"]
    assert select_rows(rows, None) == rows
    assert [r["label"] for r in select_rows(rows, "N 4096")] == ["ClipUp, σ_rel 0.1, N 4096"]
    warm = select_rows(rows, "warm: ClipUp")
    assert warm[0]["method"] == "certified" and all(r.get("warm") for r in warm[1:]) and len(warm) == 3
    with pytest.raises(ValueError, match="no row label contains"):
        select_rows(rows, "nope")


def test_seed_comparison_verdicts_follow_the_standard_error() -> None:
    sys.path.insert(0, str(EXPERIMENTS))
    from common import compare, parse_args, sized_setting

    clear = compare([0.60, 0.61, 0.62], [0.50, 0.51, 0.52])
    assert clear["verdict"] == "reproduced" and clear["diff"] == pytest.approx(0.10)
    assert clear["se"] == pytest.approx(np.sqrt(2 * np.var([0.60, 0.61, 0.62], ddof=1) / 3))
    assert compare([0.50, 0.51, 0.52], [0.60, 0.61, 0.62])["verdict"] == "not reproduced"
    assert compare([0.50, 0.60, 0.55], [0.52, 0.58, 0.54])["verdict"] == "inconclusive"
    assert compare([0.6], [0.5])["verdict"].startswith("inconclusive")
    args = parse_args("x", ["--seeds", "2", "--eps", "0.1,0.3"], sized=True)
    assert (args.setting, args.seeds, args.eps) == ("default", 2, (0.1, 0.3))
    with pytest.raises(SystemExit):
        parse_args("x", ["--eps", "-0.1"], sized=True)
    with pytest.raises(SystemExit):
        parse_args("x", ["--quick", "--full"], sized=True)
    settings = {"default": {"seeds": 3, "eps": (0.1,), "reg_weight": 0.0, "relaxations": ("ibp", "crown")}}
    args = parse_args("x", ["--set", "reg_weight=0.5", "--set", "relaxations=('ibp',)", "--seeds", "2"], sized=True)
    assert sized_setting(settings, args) == {"seeds": 2, "eps": (0.1,), "reg_weight": 0.5, "relaxations": ("ibp",)}
    with pytest.raises(ValueError, match="KEY one of"):
        sized_setting(settings, parse_args("x", ["--set", "nope=1"], sized=True))
    with pytest.raises(ValueError, match="not a Python literal"):
        sized_setting(settings, parse_args("x", ["--set", "reg_weight=abc"], sized=True))
