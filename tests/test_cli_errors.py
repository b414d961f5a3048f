"""Command-line errors are one line (``error: ...``, status 2), found before any set-up work, and leave every
folder as it was; a corrupt checkpoint is one ``warning:`` line; rerunning a finished run changes nothing."""

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jaxcert.certify import main as certify_main
from jaxcert.export import main as export_main
from jaxcert.train.__main__ import main, parse_args, resolve_config
from jaxcert.train.configs import TrainConfig
from jaxcert.train.logging import read_metrics
from jaxcert.train.resume import finished_message
from jaxcert.workflow import train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
#: A finished tiny run: 20 steps, checkpoints at 10 and 20, evaluated.
RUN_ARGS = ["--config", "tiny", "--steps", "20", "--checkpoint-every", "10", "--no-progress"]
#: The same recipe with a schedule that does not depend on ``steps`` (no warm-up, ramp or lr decay).
FLAT = ["--warmup-frac", "0", "--ramp-frac", "0", "--lr-decay-fracs", ""]


def run(entry, argv: list[str], capsys) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of a command's ``main`` (argparse errors exit)."""
    try:
        code = entry(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(text: str, prefix: str) -> str:
    """The single line of ``text``, which must start with ``prefix`` (and hold no traceback)."""
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), text
    assert "Traceback" not in text
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (mtime_ns, size)}`` of everything under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*RUN_ARGS, "--out", str(out)]) == 0
    assert (out / "results.json").is_file() and (out / "checkpoints" / "20").is_dir()
    return out


@pytest.fixture(scope="module")
def config_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("config_files")
    texts = {
        "bad.yaml": "steps: [1\n  lr: 2\n",
        "steps.json": '{"steps": "abc"}',
        "lr.json": '{"lr": "x"}',
        "fraction.json": '{"steps": 1.5}',
        "nan.json": '{"eps": NaN}',
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    return {name.replace(".", "_"): folder / name for name in texts}


#: A bad command (flags after the recipe) and what its error line says.
BAD_COMMANDS = [
    (["--steps", "abc"], "error: argument --steps: invalid int value: 'abc'"),
    (["--config-file", "{bad_yaml}"], "not valid YAML"),
    (["--config-file", "{steps_json}"], "steps.json: steps must be an int, got 'abc'"),
    (["--config-file", "{lr_json}"], "lr.json: lr must be a float, got 'x'"),
    (["--config-file", "{fraction_json}"], "fraction.json: steps must be an int, got 1.5"),
    (["--config-file", "{nan_json}"], "nan.json: eps must be a finite number, got nan"),
    (["--lr", "nan"], "lr must be a finite number, got nan"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--eps", "nan"], "eps must be a finite number"),
    (["--sigma=-inf"], "sigma must be a finite number"),
    (["--eval-eps", "inf"], "eval_eps must be a finite number"),
    (["--lr-decay-fracs", "0.5,nan"], "lr_decay_fracs must be a finite number"),
    (["--test-limit", "0"], "test_limit must be >= 1"),
    (["--train-limit", "0"], "train_limit must be >= 1"),
    (["--relaxation", "nope"], "unknown relaxation 'nope'; known: alpha-crown"),
    (["--eval-relaxations", "ibp,nope"], "unknown relaxation 'nope'"),
    (["--arch", "nope"], "unknown architecture 'nope'; known: cnn3"),
    (["--dataset", "nope"], "unknown data set 'nope'; known: cifar10, fashion_mnist, mnist, spheres"),
    (["--data-dir", "{missing}"], "--data-dir '{missing}' does not exist"),
    (["--init-from", "{missing}"], "--init-from '{missing}' does not exist"),
]


def _fill(items: list[str], paths: dict[str, Path]) -> list[str]:
    return [item.format(**{k: str(v) for k, v in paths.items()}) for item in items]


@pytest.mark.parametrize(("flags", "message"), BAD_COMMANDS, ids=[" ".join(f) for f, _ in BAD_COMMANDS])
def test_a_bad_command_is_one_error_line_and_creates_or_changes_no_folder(
    flags, message, finished_run, config_files, tmp_path, capsys
):
    paths = {**config_files, "missing": tmp_path / "missing"}
    flags, message = _fill(flags, paths), _fill([message], paths)[0]
    new = tmp_path / "new"
    code, out, err = run(main, ["--config", "tiny", *flags, "--out", str(new)], capsys)
    assert code == 2 and message in one_line(err, "error: ") and out == ""
    assert not new.exists()
    before = snapshot(finished_run)  # even with --fresh, an existing run folder is left alone
    code, out, err = run(main, [*RUN_ARGS, *flags, "--out", str(finished_run), "--fresh"], capsys)
    assert code == 2 and message in one_line(err, "error: ")
    assert snapshot(finished_run) == before


def test_bad_commands_fail_before_importing_jax(config_files, tmp_path):
    commands = [flags for flags, _ in BAD_COMMANDS if flags != ["--steps", "abc"]]  # (argparse exits)
    paths = {**config_files, "missing": tmp_path / "m"}
    argvs = [["--config", "tiny", *_fill(flags, paths), "--out", "x"] for flags in commands]
    code = (
        "import sys\n"
        "from jaxcert.train.__main__ import main\n"
        f"codes = [main(argv) for argv in {argvs!r}]\n"
        "print(codes, sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{[2] * len(argvs)} []"
    assert len(done.stderr.splitlines()) == len(argvs) and not (tmp_path / "x").exists()


def test_out_naming_an_existing_file_is_an_error_and_the_file_is_untouched(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    code, _, err = run(main, ["--config", "tiny", "--out", str(path), "--no-progress"], capsys)
    assert code == 2 and f"--out '{path}' is a file, not a folder" in one_line(err, "error: ")
    assert path.read_text() == "mine"


def test_a_diverging_run_ends_with_one_error_line(tmp_path, capsys):
    argv = ["--config", "tiny", "--lr", "1e30", "--grad-clip", "0", "--steps", "30", "--no-progress"]
    code, _, err = run(main, [*argv, "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert "non-finite training loss" in one_line(err, "error: ") and "Lower the learning rate" in err


def test_bad_flag_values_of_certify_and_export_are_one_line(finished_run, capsys):
    code, _, err = run(certify_main, [str(finished_run), "--limit", "abc"], capsys)
    assert code == 2 and "argument --limit: invalid int value: 'abc'" in one_line(err, "error: ")
    code, _, err = run(export_main, [str(finished_run), "--examples", "abc"], capsys)
    assert code == 2 and "argument --examples: invalid int value: 'abc'" in one_line(err, "error: ")
    code, _, err = run(certify_main, [], capsys)
    assert code == 2 and "required: run_dir" in one_line(err, "error: ")


def test_certify_on_a_file_says_it_is_a_file_not_a_run_folder(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text("{}")
    code, _, err = run(certify_main, [str(path)], capsys)
    assert code == 2 and "is a file, not a run folder" in one_line(err, "error: ")
    assert path.read_text() == "{}"


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_is_one_warning_line_and_the_run_resumes_from_the_previous(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--config", "tiny", "--steps", "40", "--checkpoint-every", "20", "--no-progress", "--out", str(out)]
    assert main([*argv, "--no-eval"]) == 0
    manifest = out / "checkpoints" / "40" / "state" / "manifest.ocdbt"  # truncating it makes orbax very noisy
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])
    rerun = subprocess.run(
        [sys.executable, "-m", "jaxcert.train", *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180
    )
    assert rerun.returncode == 0, rerun.stderr
    warning = one_line(rerun.stderr, "warning: checkpoint step 40 in ")
    assert "is unreadable" in warning and warning.endswith("deleted it; falling back to step 20")
    assert "resumed from step 20" in rerun.stdout
    assert json.loads((out / "results.json").read_text())["steps"] == 40


def test_the_noise_of_a_failed_restore_is_silenced_including_late_writes_of_other_threads(capfd):
    from jaxcert.train.checkpoint import silenced_stderr

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("absl").addHandler(handler)
    late = [
        threading.Timer(0.2, lambda: print("Traceback (late, Python)", file=sys.stderr)),
        threading.Timer(0.3, lambda: os.write(2, b"Traceback (late, fd 2)\n")),
    ]
    try:
        with silenced_stderr() as sink:
            print("Traceback (Python)", file=sys.stderr)
            os.write(2, b"E0000 C++ log line\n")
            logging.getLogger("absl").error("Failed to json parse")
            for timer in late:
                timer.start()
            sink.settle()  # what restore_valid does after a failed read
    finally:
        logging.getLogger("absl").removeHandler(handler)
    for timer in late:
        timer.join()
    print("after", file=sys.stderr)
    os.write(2, b"after fd\n")
    assert capfd.readouterr().err == "after\nafter fd\n" and records == []


def test_rerunning_a_finished_run_says_so_and_changes_nothing(finished_run, capsys):
    before = snapshot(finished_run)
    for extra in ([], ["--no-eval"], ["--checkpoint-every", "5", "--log-every", "1"]):
        code, out, err = run(main, [*RUN_ARGS, "--out", str(finished_run), *extra], capsys)
        assert code == 0 and err == ""
        line = one_line(out, f"{finished_run} is finished (20 of 20 steps; results in {finished_run}/results.json)")
        assert "to start over: --fresh." in line and f"--init-from {finished_run}" in line
    assert snapshot(finished_run) == before
    config = resolve_config(parse_args([*RUN_ARGS, "--out", str(finished_run)]))
    assert finished_message(config) is not None
    assert finished_message(dataclasses.replace(config, test_limit=32)) is None  # another evaluation: re-evaluate
    assert finished_message(dataclasses.replace(config, eps=0.05)) is None


def test_more_steps_on_a_scheduled_run_are_refused_up_front_saying_what_works(finished_run, capsys):
    before = snapshot(finished_run)
    code, _, err = run(main, [*RUN_ARGS, "--out", str(finished_run), "--steps", "40"], capsys)
    line = one_line(err, "error: cannot resume")
    assert code == 2 and "steps: 20 in the folder, 40 now" in line
    assert "lr decays at [16, 18]; with 40 steps:" in line and f"--init-from {finished_run} --out" in line
    assert snapshot(finished_run) == before


@pytest.mark.slow
def test_more_steps_resume_a_run_whose_schedule_does_not_depend_on_them_exactly(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*RUN_ARGS, *FLAT, "--out", str(out), "--no-eval"]
    assert main(argv) == 0
    code, printed, _ = run(main, argv, capsys)
    assert code == 0 and "is finished (20 of 20 steps; not evaluated). To train longer: --steps N;" in printed
    assert main([*argv, "--steps", "40"]) == 0
    assert "resumed from step 20" in capsys.readouterr().out
    reference = resolve_config(parse_args([*RUN_ARGS, *FLAT, "--steps", "40", "--out", str(tmp_path / "ref")]))
    records = train(reference, progress=False, evaluate=False)["metrics"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    assert strip(read_metrics(out / "metrics.jsonl")) == strip(records)


def test_the_name_lists_checked_before_set_up_are_the_registries():
    from jaxcert.bounds import relaxation_names
    from jaxcert.data import DATASETS
    from jaxcert.nets import ARCHITECTURES
    from jaxcert.train import preflight

    assert preflight.RELAXATIONS == tuple(relaxation_names())
    assert preflight.ARCHITECTURES == tuple(sorted(ARCHITECTURES))
    assert preflight.DATASETS == tuple(sorted([*DATASETS, "spheres"]))


def test_config_values_of_the_wrong_type_name_the_field():
    with pytest.raises(TypeError, match="steps must be an int, got 'abc'"):
        TrainConfig(steps="abc")
    with pytest.raises(TypeError, match="eval_relaxations must be a tuple of str"):
        TrainConfig(eval_relaxations=["ibp"])
    with pytest.raises(TypeError, match="antithetic must be a bool"):
        TrainConfig(antithetic=1)
    assert TrainConfig(eps=0, test_limit=None).eps == 0  # an int is a float
