"""The literature's recipes as named configs (jaxcert.train.recipes): they parse, validate, translate the papers'
epochs into steps, and the offline Fashion-MNIST ones train."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcert.data import load_dataset
from jaxcert.train.__main__ import main, parse_args, resolve_config
from jaxcert.train.bn_population import population_stats
from jaxcert.train.configs import CONFIGS, TrainConfig, get_config, override
from jaxcert.train.preflight import preflight
from jaxcert.train.recipes import literature_recipes
from jaxcert.workflow import train

NAMES = sorted(literature_recipes(TrainConfig()))
FMNIST = [n for n in NAMES if "-fmnist-" in n]


def fashion_mnist_offline() -> bool:
    try:
        load_dataset("fashion_mnist", "test", limit=1)
    except Exception:
        return False
    return True


def test_every_setting_and_method_has_a_recipe():
    assert len(NAMES) == 32 and all(name in CONFIGS for name in NAMES)
    for setting in ("mnist-0.1", "mnist-0.3", "cifar10-2-255", "cifar10-8-255"):
        for method in ("sabr", "taps", "staps", "mtl-ibp", "cc-ibp"):
            assert f"cnn7-{setting}-{method}" in NAMES
    assert {n for n in NAMES if n.endswith("exp-ibp")} == {"cnn7-cifar10-2-255-exp-ibp", "cnn7-cifar10-8-255-exp-ibp"}
    assert len(FMNIST) == 10 and "cnn3-fmnist-0.1-mtl-ibp" in FMNIST and "cnn7-fmnist-0.1-staps" in FMNIST


@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_parses_and_validates(tmp_path, name):
    config = get_config(name)
    assert config.name == name and config.method in name and config.objective == config.method
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # what config.json holds
    preflight(override(config, out=str(tmp_path / "run")))  # names, paths: no error
    assert resolve_config(parse_args(["--config", name])).out == f"runs/{name}"  # its own folder
    assert config.eps >= config.test_eps > 0 and config.bn_population and config.lr_decay_factor == 0.2
    assert config.arch == ("cnn3" if name.startswith("cnn3") else "cnn7_bn") and config.test_limit is None


def test_epochs_ramps_and_milestones_become_steps():
    mtl = get_config("cnn7-mnist-0.3-mtl-ibp")  # 70 epochs of 60000 // 256 = 234 steps; ramp from epoch 1 for 20
    assert mtl.steps == 70 * 234 and mtl.batch_size == 256
    assert (mtl.warmup_steps, mtl.ramp_steps, mtl.lr_decay_steps) == (234, 20 * 234, (50 * 234, 60 * 234))
    assert mtl.eps == pytest.approx(0.4002) and mtl.test_eps == 0.3 and mtl.method_alpha == 0.08
    assert (mtl.attack_steps, mtl.attack_step_rel, mtl.l1) == (1, 10.0, 1e-6)
    sabr = get_config("cnn7-cifar10-2-255-sabr")  # 160 epochs of 50000 // 128 = 390; ε from epoch 2 to 82
    assert sabr.steps == 160 * 390 and sabr.eps == sabr.test_eps == pytest.approx(2 / 255)
    assert (sabr.warmup_steps, sabr.ramp_steps, sabr.lr_decay_steps) == (780, 80 * 390, (120 * 390, 140 * 390))
    assert sabr.sabr_lambda == 0.1 and sabr.l1 == 1e-6
    taps = get_config("cnn7-mnist-0.1-taps")
    assert (taps.eps, taps.test_eps, taps.taps_split, taps.attack_steps) == (0.2, 0.1, 17, 20)
    assert get_config("cnn7-cifar10-2-255-taps").taps_split == 4  # the reference's --block-sizes 4 17
    assert get_config("cnn3-fmnist-0.1-taps").taps_split == 3  # CNN3's last conv block and the Dense
    exp = get_config("cnn7-cifar10-8-255-exp-ibp")
    assert exp.steps == 260 * 390 and exp.lr_decay_steps == (180 * 390, 220 * 390) and exp.method_alpha == 0.5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--taps-estimator", "best"], "unknown taps_estimator 'best'"),
        (["--attack-step-rel", "-1"], "attack_step_rel must be >= 0"),
        (["--lr-decay-factor", "0"], "lr_decay_factor must be in (0, 1]"),
    ],
)
def test_the_new_fields_are_checked_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["--config", "cnn7-mnist-0.1-taps", *flags, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not out.exists()


def tiny(name: str, out: Path, **changes) -> TrainConfig:
    """The recipe on 48 Fashion-MNIST examples for 2 steps of 16, its schedule kept (warm-up 0, ramp at once)."""
    shrink = {"train_limit": 48, "batch_size": 16, "steps": 2, "warmup_frac": 0.0, "ramp_frac": 0.0}
    shrink |= {"test_limit": 8, "eval_batch_size": 8, "eval_pgd_steps": 1, "eval_apgd_steps": 0, "out": str(out)}
    return override(get_config(name), **shrink, **changes)


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_offline(), reason="Fashion-MNIST is not available offline")
@pytest.mark.parametrize("name", FMNIST)
def test_each_fashion_mnist_recipe_trains_two_steps(tmp_path, name):
    config = tiny(name, tmp_path / "run")
    preflight(config)
    evaluate = name == "cnn3-fmnist-0.1-sabr"  # one certification: the report names the method
    result = train(config, progress=False, evaluate=evaluate)
    state = result["state"]
    assert int(state.step) == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records and all(np.isfinite(r["loss"]) for r in records)
    assert records[-1]["eps"] == pytest.approx(config.eps)
    if evaluate:
        report = json.loads((tmp_path / "run" / "certify.json").read_text())
        assert report["settings"]["training"] == {"method": "sabr", "objective": "sabr", "relaxation": "ibp"}
        assert json.loads((tmp_path / "run" / "results.json").read_text())["eps"] == 0.1
    if config.arch == "cnn7_bn":  # the saved statistics are the training set's population statistics
        train_x = load_dataset("fashion_mnist", "train", limit=48).x
        expected = population_stats(result["arch"], state.full_params, train_x)
        for k, fresh in enumerate(expected):
            for stat in ("mean", "var"):
                if stat in fresh:
                    np.testing.assert_allclose(state.frozen[k][stat], fresh[stat], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_offline(), reason="Fashion-MNIST is not available offline")
def test_bn_population_off_keeps_the_running_averages(tmp_path):
    on = train(tiny("cnn7-fmnist-0.1-mtl-ibp", tmp_path / "on"), progress=False, evaluate=False)["state"]
    off_config = tiny("cnn7-fmnist-0.1-mtl-ibp", tmp_path / "off", bn_population=False)
    off = train(off_config, progress=False, evaluate=False)["state"]
    for a, b in zip(jax.tree_util.tree_leaves(on.params), jax.tree_util.tree_leaves(off.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the same training
    assert not np.allclose(on.frozen[2]["var"], off.frozen[2]["var"], rtol=1e-3)  # different statistics
