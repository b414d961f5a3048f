import json

import pytest

from jaxcert.data import DatasetNotFoundError, load_dataset
from jaxcert.train.__main__ import main
from jaxcert.train.configs import CONFIGS, get_config, override
from jaxcert.train.loop import NonFiniteLossError
from jaxcert.workflow import train


def _has_fashion_mnist() -> bool:
    try:
        load_dataset("fashion_mnist", "test", limit=1)
    except DatasetNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _has_fashion_mnist(), reason="no offline Fashion-MNIST")
def test_quickstart_runs_end_to_end_on_a_tiny_limit(tmp_path, capsys):
    out = tmp_path / "qs"
    argv = ["--config", "quickstart", "--steps", "6", "--train-limit", "128", "--test-limit", "40", "--batch-size",
            "32", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "clean_acc" in printed and "pgd_acc" in printed and "cert_acc/ibp" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["test_examples"] == 40 and results["steps"] == 6 and results["eps"] == 0.1
    for key in ("clean_acc", "pgd_acc", "cert_acc/ibp"):
        assert 0.0 <= results[key] <= 1.0
    assert results["cert_acc/ibp"] <= results["pgd_acc"] <= results["clean_acc"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [6]  # log_every = 10 > steps: only the final record
    assert (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["name"] == "quickstart"


def test_unknown_config_relaxation_or_field_is_a_clear_error(tmp_path, capsys):
    assert main(["--config", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown config 'nope'" in capsys.readouterr().err
    assert main(["--config", "tiny", "--relaxation", "nope", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "unknown relaxation 'nope'" in capsys.readouterr().err
    assert main(["--config", "tiny", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown method"):
        override(get_config("tiny"), method="sgd")
    with pytest.raises(ValueError, match="unknown config fields"):
        override(get_config("tiny"), warmup=3)


def test_named_recipes_exist_and_round_trip_through_json():
    for name in ("quickstart", "ibp", "crown-ibp", "rgs", "pgpe", "pgd", "standard", "tiny"):
        config = get_config(name)
        assert config.name == name
        assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert get_config("crown-ibp").relaxation == "crown-ibp"
    assert {CONFIGS["rgs"].method, CONFIGS["pgpe"].method, CONFIGS["pgd"].method} == {"rgs", "pgpe", "pgd"}


def test_a_diverging_run_stops_with_a_clear_error(tmp_path):
    config = override(get_config("tiny"), lr=1e30, grad_clip=0.0, steps=30, out=str(tmp_path))
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train(config, progress=False, evaluate=False)
