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
    return loaded


def check_table(record: dict) -> None:
    """The markdown file holds a header, a separator and one line per row, and is also printed."""
    lines = record["markdown"].strip().splitlines()
    assert len(lines) == 2 + len(record["rows"])
    assert lines[0].startswith("| ") and lines[1].startswith("|---")
    assert record["markdown"].strip() in record["stdout"]


def check_accuracy_chain(row: dict, relaxations: tuple[str, ...]) -> None:
    """Per example cert ⇒ PGD-robust ⇒ clean, so the means are ordered; 'any' is the union of verifiers."""
    certs = [row[f"cert_acc/{r}"] for r in relaxations]
    for value in (row["clean_acc"], row["pgd_acc"], *certs, row["cert_acc/any"]):
        assert 0.0 <= value <= 1.0
    assert row["cert_acc/any"] <= row["pgd_acc"] + TOL <= row["clean_acc"] + 2 * TOL
    assert row["cert_acc/any"] + TOL >= max(certs)


def test_paradox_rows(results: dict[str, dict]) -> None:
    record = results["paradox"]
    rows = record["rows"]
    assert [r["relaxation"] for r in rows] == ["ibp", "crown"]
    assert record["settings"]["eps"] == 0.1
    for row in rows:
        check_accuracy_chain(row, ("ibp", "crown"))
        assert row["cert_acc/train"] == row[f"cert_acc/{row['relaxation']}"]
        for key in ("jump_coarse", "rel_jump_coarse", "rel_jump_fine", "sens_1e-3", "sens_1e-2", "grad_norm"):
            assert np.isfinite(row[key]) and row[key] >= 0, key
        assert -1.0 - TOL <= row["min_cosine"] <= 1.0 + TOL
        assert row["unstable_ibp"] >= 0
        assert row["cert_loss"] > 0  # the certified cross-entropy is strictly positive
    # The quick reference verifier is CROWN itself, so CROWN's own tightness is exactly 1.
    assert rows[1]["tightness"] == pytest.approx(1.0, rel=1e-5)
    check_table(record)


def test_gls_vs_ibp_rows(results: dict[str, dict]) -> None:
    record = results["gls_vs_ibp"]
    rows = record["rows"]
    assert [(r["method"], r["relaxation"]) for r in rows] == [("certified", "ibp"), ("rgs", "crown"), ("pgpe", "crown")]
    for row in rows:
        check_accuracy_chain(row, ("ibp", "crown", "crown-ibp"))
        assert row["cert_acc/train"] == row[f"cert_acc/{row['relaxation']}"]
        assert np.isfinite(row["train_loss"]) and row["train_seconds"] > 0
    check_table(record)


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
