"""What a training run says while it runs (compiling, first loss, estimated time) and its validation split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxcert.data import concentric_spheres
from jaxcert.train import loop
from jaxcert.train.configs import get_config, override


def test_the_step_clock_reports_the_compiled_first_step_then_an_estimate_of_the_rest(monkeypatch):
    now = iter([100.0, 130.0, 132.0, 134.0, 136.0, 138.0])  # 30 s to compile, then 2 s per step
    monkeypatch.setattr(loop.time, "time", lambda: next(now))
    clock = loop._StepClock(step=0, total=1000, measure=3)
    assert clock.tick(1, 2.5) == "step 1: loss 2.5000 (compiled and ran in 30.0 s)"
    assert clock.tick(2, 2.4) is None and clock.tick(3, 2.3) is None
    assert clock.tick(4, 2.2) == (
        "step 4: loss 2.2000; 2 s per step, about 33 min 12 s for the remaining 996 of 1000 steps"
    )  # (1000 - 4) · 2 s, the compilation left out
    assert clock.tick(5, 2.1) is None


def test_a_resumed_or_short_run_still_gets_its_estimate():
    clock = loop._StepClock(step=40, total=43, measure=3)  # resumed at 40, 3 steps left
    assert clock.tick(41, 1.0).startswith("step 41: loss 1.0000 (compiled")
    assert clock.tick(42, 1.0) is None
    assert "remaining 0 of 43 steps" in clock.tick(43, 1.0)  # the last step comes before `measure` more


@pytest.mark.parametrize(("seconds", "text"), [(12.4, "12 s"), (250, "4 min 10 s"), (3900, "1 h 05 min")])
def test_durations_read_as_hours_minutes_seconds(seconds, text):
    assert loop._duration(seconds) == text


def test_a_tiny_run_says_it_compiles_and_shows_the_loss_and_estimate_from_the_first_steps(tmp_path, capsys):
    loop.run_training(override(get_config("tiny"), out=str(tmp_path / "run"), steps=8), progress=False)
    lines = capsys.readouterr().out.splitlines()
    compiling = next(i for i, line in enumerate(lines) if line.startswith("compiling the training step (certified)"))
    assert lines[compiling + 1].startswith("step 1: loss ") and "compiled and ran in" in lines[compiling + 1]
    assert any(line.startswith("step 4: loss ") and "s per step, about" in line for line in lines)


def test_the_validation_split_is_the_held_out_tail_of_the_training_split():
    train = concentric_spheres(100, 10, seed=0)
    rest, val = loop.validation_split(train, 30)
    assert len(rest) == 70 and len(val) == 30 and val.name.endswith("-val")
    np.testing.assert_array_equal(np.concatenate([rest.x, val.x]), train.x)
    assert loop.validation_split(train, 0) == (train, None)
    with pytest.raises(ValueError, match="leaves no training examples"):
        loop.validation_split(train, 100)
    with pytest.raises(ValueError, match="val_size and val_every"):
        override(get_config("tiny"), val_size=-1)


def test_a_run_with_a_validation_split_trains_without_it_and_logs_its_curve(tmp_path):
    config = override(get_config("tiny"), out=str(tmp_path / "run"), steps=12, val_size=64, val_every=5)
    setup = loop.setup(config)
    assert len(setup.train_ds) == 256 - 64 and len(setup.val_ds) == 64  # tiny trains on 256 spheres points
    loop.run_training(config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_cert_acc" in r]
    assert [r["step"] for r in val] == [5, 10, 12]  # every val_every steps and at the end
    for r in val:
        assert 0 <= r["val_cert_acc/ibp"] <= r["val_cert_acc"] <= r["val_pgd_acc"] <= r["val_clean_acc"] <= 1
        ibp, crown_ibp = r["val_cert_acc/ibp"], r["val_cert_acc/crown-ibp"]
        assert max(ibp, crown_ibp) <= r["val_cert_acc"] <= ibp + crown_ibp  # certified by either


def test_the_validation_split_is_certified_by_the_named_relaxations(tmp_path):
    config = override(
        get_config("tiny"), out=str(tmp_path / "run"), steps=4, val_size=64, val_every=4, val_relaxations=("crown",)
    )
    assert config.val_cascade == ("crown",) and get_config("tiny").val_cascade == ("ibp", "crown-ibp")
    loop.run_training(config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (val,) = [r for r in records if "val_cert_acc" in r]
    assert "val_cert_acc/ibp" not in val and val["val_cert_acc"] == val["val_cert_acc/crown"]


def test_an_unknown_validation_relaxation_is_refused_before_set_up():
    from jaxcert.train.preflight import check_names

    with pytest.raises(ValueError, match="unknown relaxation 'crwn'"):
        check_names(override(get_config("tiny"), val_relaxations=("crwn",)))


def test_the_validation_curve_is_drawn_beside_the_training_accuracies():
    from jaxcert.train.logging import metrics_figure

    records = [{"step": s, "epoch": 0, "loss": 1.0, "clean_acc": 0.5, "cert_acc": 0.3} for s in (1, 2, 3)]
    records += [{"step": s, "epoch": 0, "val_clean_acc": 0.6, "val_cert_acc": 0.4} for s in (2, 3)]
    labels = metrics_figure(records).axes[1].get_legend_handles_labels()[1]
    assert {"train clean_acc", "val_clean_acc", "val_cert_acc"} <= set(labels)
    lines = {line.get_label(): line for line in metrics_figure(records).axes[1].get_lines()}
    assert list(lines["val_cert_acc"].get_xdata()) == [2, 3] and list(lines["val_cert_acc"].get_ydata()) == [0.4, 0.4]
