"""Command-line flags generated from TrainConfig, config files, --print-config, lazy imports."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxcert.train.__main__ import build_parser, main, resolve_config
from jaxcert.train.config_cli import field_help, field_parser, flag_name, read_config_file
from jaxcert.train.configs import TrainConfig, get_config

ROOT = Path(__file__).resolve().parents[1]


def _example_value(field: dataclasses.Field):
    """A command-line string and the value it must parse to, differing from the default."""
    default = field.default
    kind = str(field.type).replace(" ", "")
    if kind == "bool":
        return None, not default
    if kind.startswith("dict"):  # a mapping field: one NAME=VALUE item per flag
        return "unstable_budget=8", ["unstable_budget=8"]
    if kind.startswith("tuple[float"):
        return "0.25,0.5", (0.25, 0.5)
    if kind.startswith("tuple[str"):
        return "ibp,crown", ("ibp", "crown")
    if kind.startswith("int"):
        return "7", 7
    if kind.startswith("float"):
        return "0.125", 0.125
    return "some-text", "some-text"


def test_every_config_field_has_a_flag_with_help_that_sets_it():
    parser = build_parser()
    helps = field_help()
    for field in dataclasses.fields(TrainConfig):
        text, expected = _example_value(field)
        flag = flag_name(field.name)
        argv = [flag] if text is None and expected else [f"--no-{flag[2:]}"] if text is None else [flag, text]
        parsed = vars(parser.parse_args(argv))
        assert parsed[field.name] == expected, field.name
        assert helps[field.name], f"field {field.name} has no help text (add a comment or metadata['help'])"
    # absent flags leave the recipe alone
    assert not set(vars(parser.parse_args([]))) & {f.name for f in dataclasses.fields(TrainConfig)}


def test_optional_fields_accept_none_and_tuples_accept_comma_lists():
    args = build_parser().parse_args(["--config", "tiny", "--test-limit", "none", "--lr-decay-fracs", "0.5,0.75"])
    config = resolve_config(args)
    assert config.test_limit is None and config.lr_decay_fracs == (0.5, 0.75)
    parse, metavar = field_parser("tuple[str, ...]")
    assert parse("") == () and parse("a, b") == ("a", "b") and metavar == "STR,..."
    with pytest.raises(TypeError, match="no command-line parser"):
        field_parser("dict[str, int]")


def test_config_file_sits_between_the_recipe_and_the_flags(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"eps": 0.05, "steps": 30, "lr_decay_fracs": [0.5]}))
    assert main(["--config", "tiny", "--config-file", str(path), "--steps", "40", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["eps"] == 0.05 and printed["steps"] == 40 and printed["lr_decay_fracs"] == [0.5]
    assert printed["arch"] == get_config("tiny").arch
    assert TrainConfig.from_dict(printed).out.startswith("runs/tiny-certified-ibp-")
    path.write_text(json.dumps({"warmup": 3}))
    assert main(["--config", "tiny", "--config-file", str(path), "--print-config"]) == 2
    assert "unknown config fields: warmup" in capsys.readouterr().err
    assert main(["--config", "tiny", "--config-file", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config_file(path)


def test_yaml_config_files_when_pyyaml_is_installed(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"eps": 0.2, "eval_relaxations": ["ibp", "crown"]}))
    assert read_config_file(path) == {"eps": 0.2, "eval_relaxations": ("ibp", "crown")}


def test_help_and_print_config_do_not_import_jax():
    code = (
        "import sys, contextlib, io\n"
        "from jaxcert.train.__main__ import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--config', 'tiny', '--print-config'])\n"
        "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax', 'tensorflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "jaxcert.train", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0 and "--kappa-final" in help_text.stdout and "--no-antithetic" in help_text.stdout


def test_eval_cascade_defaults_to_ibp_crown_ibp_and_the_training_relaxation_cheapest_first():
    assert get_config("tiny").eval_cascade == ("ibp", "crown-ibp")
    deeppoly = dataclasses.replace(get_config("tiny"), relaxation="deeppoly")
    assert deeppoly.eval_cascade == ("ibp", "crown-ibp", "deeppoly")
    assert dataclasses.replace(get_config("tiny"), eval_relaxations=("crown",)).eval_cascade == ("crown",)


def test_download_flag_reaches_the_data_loader(tmp_path, monkeypatch, capsys):
    import jaxcert.train.run_data as run_data

    calls = []

    def fake_load(name, split, **kwargs):
        calls.append((name, split, kwargs))
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(run_data, "load_dataset", fake_load)
    argv = ["--config", "tiny", "--dataset", "mnist", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--download"]) == 2
    assert calls == [("mnist", "train", {"limit": 256, "data_dir": None, "download": True})]
    assert "stop here" in capsys.readouterr().err
