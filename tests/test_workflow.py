"""Train-then-certify as a workflow above both: certifying never imports the training loop, ``load_run``
builds no trainer, and relaxation options travel from the config and the command lines to the bounds and
the reports."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcert.runs import load_run
from jaxcert.train.configs import get_config, override

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _python(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _refuse_trainers(monkeypatch) -> None:
    """Building a trainer (or its initial params, or a PGPE state) raises from here on."""
    import jaxcert.train.loop as loop
    import jaxcert.train.pgpe as pgpe

    def refuse(*args, **kwargs):
        raise AssertionError("load_run built a trainer")

    for module, name in ((loop, "make_trainer"), (loop, "initial_params"), (pgpe, "pgpe_trainer")):
        monkeypatch.setattr(module, name, refuse)


def _assert_same_params(got, want) -> None:
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_certifying_a_run_never_imports_the_training_loop(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    argv = [str(run_dir), "--limit", "8", "--relaxations", "ibp,crown", "--pgd-steps", "1", "--pgd-restarts", "1"]
    argv += ["--apgd-steps", "0", "--no-progress", "--relaxation-option", "unstable_budget=1"]
    code = (
        "import sys\n"
        "import jaxcert.certify, jaxcert.runs\n"
        "before = 'jaxcert.train.loop' in sys.modules\n"
        f"status = jaxcert.certify.main({argv!r})\n"
        "print(status, before, 'jaxcert.train.loop' in sys.modules, 'jaxcert.workflow' in sys.modules)\n"
    )
    assert _python(code, tmp_path) == "0 False False False"
    report = json.loads((run_dir / "certify-eps0.02-n8.json").read_text())
    assert report["settings"]["relaxation_options"] == {"unstable_budget": 1}


def test_load_run_restores_the_trained_params_without_building_a_trainer(tiny_run, monkeypatch):
    run_dir, result = tiny_run
    _refuse_trainers(monkeypatch)
    arch, params, config = load_run(run_dir)
    assert arch == result["arch"] and config.name == "tiny"
    _assert_same_params(params, result["state"].full_params)


@pytest.mark.slow
def test_load_run_of_a_pgpe_run_builds_no_evosax_state(tmp_path, monkeypatch):
    from jaxcert.workflow import train

    config = override(get_config("tiny"), method="pgpe", population=4, steps=4, checkpoint_every=2)
    result = train(override(config, out=str(tmp_path / "pgpe")), progress=False, evaluate=False)
    _refuse_trainers(monkeypatch)
    _, params, loaded = load_run(tmp_path / "pgpe")
    assert loaded.method == "pgpe"
    _assert_same_params(params, result["state"].full_params)


def test_load_run_names_the_layer_whose_saved_shape_differs(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "arch": "paradox_fc"}))
    with pytest.raises(ValueError, match=r"cannot restore .*architecture mismatch"):
        load_run(run_dir)


@pytest.mark.slow
def test_relaxation_options_reach_training_and_certification_and_are_recorded(tmp_path):
    from jaxcert.train.loop import training_relaxation_options
    from jaxcert.train.resume import resume_refusal
    from jaxcert.workflow import train

    options = {"lower_slope": "zero", "unstable_budget": 1}
    config = override(
        get_config("tiny"), relaxation="crown-ibp", relaxation_options=options, eval_relaxations=("ibp", "crown"),
        steps=4, checkpoint_every=4, test_limit=16, eval_apgd_steps=0, out=str(tmp_path / "run"),
    )  # fmt: skip
    assert training_relaxation_options(config) == {"lower_slope": "zero"}  # crown-ibp takes no unstable_budget
    train(config, progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["relaxation_options"] == options
    settings = json.loads((tmp_path / "run" / "certify.json").read_text())["settings"]
    assert settings["relaxation_options"] == options
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    refusal = resume_refusal(saved, override(config, relaxation_options={"lower_slope": "one"}))
    assert refusal is not None and "relaxation_options" in refusal
    assert resume_refusal(saved, override(config, relaxation_options=dict(reversed(options.items())))) is None


def test_an_option_no_relaxation_of_the_run_takes_is_one_error_line(tmp_path, capsys):
    from jaxcert.train.__main__ import main

    out = tmp_path / "run"
    assert main(["--config", "tiny", "--relaxation-option", "steps=3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "relaxation option(s) steps taken by none of the relaxations ibp, crown-ibp" in err
    assert not out.exists()


def test_bad_relaxation_options_fail_before_importing_jax(tmp_path):
    code = (
        "import sys\n"
        "from jaxcert.certify import main as certify\n"
        "from jaxcert.train.__main__ import main as train\n"
        "codes = [certify(['somewhere', '--relaxation-option', 'nope=1']),\n"
        "         certify(['somewhere', '--relaxation-option', 'patches=sometimes']),\n"
        "         train(['--config', 'tiny', '--relaxation-option', 'unstable_budget=0', '--out', 'x']),\n"
        "         train(['--config', 'tiny', '--relaxation-option', 'budget', '--out', 'x'])]\n"
        "print(codes, sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.stdout.strip() == "[2, 2, 2, 2] []", done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines)
    assert "unknown relaxation option(s) nope" in lines[0] and "patches must be true, false or auto" in lines[1]
    assert "unstable_budget must be an int >= 1, got 0" in lines[2] and "NAME=VALUE" in lines[3]
    assert not (tmp_path / "x").exists()
