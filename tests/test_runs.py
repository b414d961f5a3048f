"""Runs resume by default: kill -9 and Ctrl-C, corrupt checkpoints, --fresh, output folders, data errors."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jaxcert.train.__main__ import main, resolve_config
from jaxcert.train.__main__ import parse_args as parse_train_args
from jaxcert.train.checkpoint import Checkpoints, interrupts_deferred
from jaxcert.train.configs import get_config, override
from jaxcert.train.logging import read_metrics
from jaxcert.workflow import train
from tests.cli_runs import signal_on_line
from tests.test_checkpoint import assert_trees_equal

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxcert.train", "--config", "tiny", "--no-progress", "--out", str(out), *extra]


def _strip_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


@pytest.mark.slow
def test_rerunning_a_killed_command_resumes_by_default_and_ends_as_an_uninterrupted_run(tmp_path):
    steps, every = 160, 40
    out = tmp_path / "killed"
    cmd = _cli(out, "--steps", str(steps), "--checkpoint-every", str(every))
    returncode, line = signal_on_line(cmd, "checkpoint saved at step", signal.SIGKILL, cwd=ROOT, env=ENV)
    saved = [int(line.split()[-1])] if line else []
    assert returncode == -signal.SIGKILL and saved and saved[-1] < steps

    rerun = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)  # the same command
    assert rerun.returncode == 0, rerun.stderr
    resumed_at = int(re.search(r"resumed from step (\d+)", rerun.stdout).group(1))
    assert resumed_at == saved[-1]  # nothing after the last saved checkpoint survived; at most `every` steps lost
    assert "(d = 10, seed 0)" in rerun.stdout  # the data source is printed

    config = override(get_config("tiny"), steps=steps, checkpoint_every=every, out=str(tmp_path / "clean"))
    reference = train(config, progress=False)
    results = json.loads((out / "results.json").read_text())
    for key, value in reference["eval"].items():
        assert results[key] == value, key
    assert results["data_source"]["test"].startswith("synthetic concentric spheres")
    assert _strip_time(read_metrics(out / "metrics.jsonl")) == _strip_time(reference["metrics"])


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_at_the_current_step_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    cmd = _cli(out, "--steps", "100000", "--checkpoint-every", "20", "--no-eval")
    with open(tmp_path / "stderr.txt", "w+") as stderr:  # a file, not a pipe: the child never blocks on it
        returncode, _ = signal_on_line(
            cmd, "checkpoint saved at step 20", signal.SIGINT, cwd=ROOT, env=ENV, stderr=stderr, timeout=180
        )
        stderr.seek(0)
        err = stderr.read()
    assert returncode == 130, err
    step = int(re.search(r"interrupted at step (\d+)", err).group(1))
    assert step >= 20 and "Resume with" in err and "Traceback" not in err
    checkpoints = Checkpoints(out / "checkpoints", every=20)
    assert checkpoints.latest_step() == step
    checkpoints.close()


def test_ctrl_c_during_a_checkpoint_save_is_raised_once_the_checkpoint_is_complete(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append(True)  # the block is not cut short
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    with interrupts_deferred():  # no signal: nothing raised
        finished.append(True)
    assert finished == [True, True]


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, capsys):
    config = override(get_config("tiny"), steps=60, checkpoint_every=20, out=str(tmp_path / "run"))
    first = train(config, progress=False, evaluate=False)["state"]
    state_files = [p for p in (tmp_path / "run" / "checkpoints" / "60").rglob("*") if p.is_file()]
    biggest = max(state_files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # a truncated write
    capsys.readouterr()
    with pytest.warns(RuntimeWarning, match="step 60 .* unreadable"):
        again = train(config, progress=False, evaluate=False)["state"]
    assert "resumed from step 40" in capsys.readouterr().out
    assert int(again.step) == 60
    assert_trees_equal(again.params, first.params)  # steps 41..60 redone exactly


@pytest.mark.slow
def test_fresh_starts_over_and_a_different_config_in_the_folder_is_an_error_naming_the_fields(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--config", "tiny", "--steps", "20", "--checkpoint-every", "10", "--out", str(out), "--no-progress"]
    assert main([*args, "--no-eval"]) == 0
    assert main([*args, "--no-eval", "--eps", "0.05", "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "eps: 0.02 in the folder, 0.05 now" in err and "lr: 0.01" in err
    assert "--fresh" in err
    assert main([*args, "--no-eval", "--eps", "0.05", "--fresh"]) == 0
    printed = capsys.readouterr().out
    assert "resumed" not in printed
    meta = Checkpoints(out / "checkpoints", every=10).read_meta()
    assert meta["config"]["eps"] == 0.05
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")][-1] == 20


def test_a_config_saved_before_a_field_existed_resumes_when_the_field_is_at_its_default():
    from jaxcert.train.loop import config_differences

    config = get_config("tiny")
    saved = json.loads(json.dumps(config.to_dict()))
    del saved["bn_mode"], saved["reg_weight"]  # written before these fields existed
    assert config_differences(saved, config) == {}
    changed = override(config, reg_weight=0.5)
    assert config_differences(saved, changed) == {"reg_weight": (0.0, 0.5)}


def test_default_output_folders_are_distinct_per_override_and_stable_across_reruns():
    folder = lambda *argv: resolve_config(parse_train_args(["--config", "tiny", *argv])).out
    assert folder() == get_config("tiny").out
    assert folder("--eps", "0.05") == folder("--eps", "0.05")  # the same command resumes in the same folder
    assert folder("--eps", "0.05") != folder("--eps", "0.04")
    assert folder("--relaxation", "crown-ibp").startswith("runs/tiny-certified-crown-ibp-")
    assert folder("--out", "elsewhere") == "elsewhere"


def test_a_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    for dataset in ("spheres", "mnist"):
        argv = ["--config", "tiny", "--dataset", dataset, "--data-dir", str(missing), "--out", str(tmp_path / "o")]
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and str(missing) in err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_the_training_plot_draws_the_schedule_with_the_losses_and_tabulates_the_final_test_accuracies(tmp_path):
    import matplotlib.pyplot as plt

    from jaxcert.train.logging import metrics_figure, plot_metrics
    from jaxcert.train.loop import _schedule_curve

    config = override(get_config("tiny"), relaxation="crown-ibp", steps=100)
    records = [{"step": s, "loss": 1.0 / s, "cert_loss": 2.0 / s, "clean_acc": 0.5} for s in (10, 50, 100)]
    records.append({"step": 100, "test_clean_acc": 0.6, "test_cert_acc": 0.3, "test_cert_acc/ibp": 0.2})
    schedule = _schedule_curve(config)
    assert schedule["eps"][0] == 0.0 and schedule["eps"][-1] == pytest.approx(config.eps)
    fig = metrics_figure(records, "t", schedule)
    ax_loss, ax_acc, ax_schedule, ax_table = fig.axes
    labels = [line.get_label() for line in ax_schedule.get_lines()]
    assert labels == [f"ε / {config.eps:g}", "κ (clean weight)", "β (CROWN-IBP)"]
    assert [line.get_label() for line in ax_loss.get_lines()] == ["loss", "cert_loss"]
    # the final test accuracies are a table (in percent, at their step), not markers piled up at the last step
    assert [line.get_label() for line in ax_acc.get_lines()] == ["train clean_acc"] and not ax_acc.collections
    (table,) = ax_table.tables
    cells = {(r, c): cell.get_text().get_text() for (r, c), cell in table.get_celld().items()}
    assert [[cells[r, c] for c in range(2)] for r in range(4)] == [
        ["test", "accuracy"], ["clean_acc", "60.0%"], ["cert_acc", "30.0%"], ["cert_acc/ibp", "20.0%"]
    ]  # fmt: skip
    assert ax_table.get_title() == "final evaluation (step 100)"
    # one legend per panel (the schedule's lines in the loss legend), below its axes: it covers no curve
    fig.canvas.draw()
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == ["loss", "cert_loss", *labels]
    assert ax_schedule.get_legend() is None
    for ax in (ax_loss, ax_acc):
        legend, plot_area = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 < plot_area.y0
    plt.close(fig)
    assert plot_metrics(records, tmp_path / "c.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_command_keeps_freed_host_memory_unless_told_to_release_it(tmp_path):
    """``python -m jaxcert.train`` applies ``keep_freed_host_memory`` before JAX starts (it says so);
    ``--release-host-memory`` leaves glibc's defaults; the run is the same either way."""
    line = "host memory: freed buffers are kept for reuse"
    runs = {}
    for name, extra in (("kept", ()), ("released", ("--release-host-memory",))):
        cmd = _cli(tmp_path / name, "--steps", "3", "--no-eval", *extra)
        done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        runs[name] = done.stdout
    assert line in runs["kept"] and line not in runs["released"]
    losses = {n: [r["loss"] for r in read_metrics(tmp_path / n / "metrics.jsonl") if "loss" in r] for n in runs}
    assert losses["kept"] and losses["kept"] == losses["released"]
