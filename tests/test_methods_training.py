"""The state-of-the-art objectives in the trainers: vmapped over GLS members, and from the command line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.nets import Dense, Flatten, Normalize, ReLU, init_params, split_trainable
from jaxcert.train import gaussian_noise, perturb, population_fitness, recipe_schedule
from jaxcert.train.__main__ import main, parse_args, resolve_config
from jaxcert.train.configs import SOTA_METHODS
from jaxcert.train.members import map_members
from jaxcert.train.methods import make_objective

ARCH = (Normalize((0.5,), (0.3,)), Flatten(), Dense(10), ReLU(), Dense(8), ReLU(), Dense(3))
SHAPE = (2, 2, 1)
SCHEDULE = recipe_schedule(0.1, warmup=1, ramp=4)
MEMBERS = 4


@pytest.fixture(scope="module")
def problem():
    params = init_params(ARCH, SHAPE, seed=0)
    trainable, frozen = split_trainable(params)
    x = jax.random.uniform(jax.random.key(5), (12, *SHAPE))
    members = perturb(trainable, gaussian_noise(jax.random.key(6), trainable, MEMBERS), 0.05)
    return trainable, frozen, members, x, jnp.arange(12) % 3


@pytest.mark.parametrize("name", SOTA_METHODS)
@pytest.mark.slow
def test_members_vmapped_equal_a_python_loop(problem, name):
    """RGS's vmapped value-and-gradient and PGPE's fitness over the members equal one jitted call per member."""
    _, frozen, members, x, y = problem
    objective = make_objective(name, ARCH, "ibp", SCHEDULE, sabr_lambda=0.5, method_alpha=0.3, attack_steps=3)
    step = 3  # mid-ramp: ε_t, κ_t scheduled
    vmapped = jax.jit(map_members(jax.value_and_grad(objective, has_aux=True)))
    (losses, aux), grads = vmapped(members, frozen, x, y, step)
    fitness, _ = jax.jit(population_fitness(objective, chunk=2))(members, frozen, x, y, step)
    single = jax.jit(jax.value_and_grad(objective, has_aux=True))
    for i in range(MEMBERS):
        member = jax.tree_util.tree_map(lambda a, i=i: a[i], members)
        (loss_i, aux_i), grad_i = single(member, frozen, x, y, step)
        np.testing.assert_allclose(losses[i], loss_i, rtol=1e-5)
        np.testing.assert_allclose(fitness[i], loss_i, rtol=1e-5)
        np.testing.assert_allclose(aux["robust_loss"][i], aux_i["robust_loss"], rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grad_i), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6)
            assert np.all(np.isfinite(b))
    assert float(jnp.std(losses)) > 0  # the members differ
    assert float(aux["eps"][0]) == pytest.approx(0.1 * 2 / 4)


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss_at_mean", r["loss"]) for r in records if "loss" in r]


CONSTANT_EPS = ["--warmup-frac", "0", "--ramp-frac", "0", "--no-progress", "--fresh"]


@pytest.mark.parametrize(
    "flags",
    [["--method", m] for m in SOTA_METHODS]
    + [["--method", "rgs", "--objective", "mtl-ibp"], ["--method", "pgpe", "--objective", "sabr"]],
)
@pytest.mark.slow
def test_each_method_trains_from_the_command_line(tmp_path, capsys, flags):
    out = tmp_path / "run"
    evaluate = flags[1] in ("sabr", "rgs")
    argv = ["--config", "tiny", *flags, *CONSTANT_EPS, "--out", str(out), *([] if evaluate else ["--no-eval"])]
    assert main(argv) == 0
    losses = _losses(out)
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0] - 0.01  # the loss goes down over the 60 steps
    saved = json.loads((out / "config.json").read_text())
    objective = flags[-1]
    assert saved["method"] == flags[1] and saved["objective"] == objective
    if evaluate:
        results = json.loads((out / "results.json").read_text())
        assert results["method"] == flags[1] and results["objective"] == objective
        report = json.loads((out / "certify.json").read_text())
        assert report["settings"]["training"] == {"method": flags[1], "objective": objective, "relaxation": "ibp"}
        assert objective in (out / "certify.md").read_text()
        assert f"({saved['method'] if objective == flags[1] else 'rgs-' + objective}, ibp" in capsys.readouterr().out


def test_the_method_names_the_run_folder():
    out = lambda *flags: resolve_config(parse_args(["--config", "tiny", *flags])).out
    assert out("--method", "sabr").startswith("runs/tiny-sabr-ibp-")
    assert out("--method", "rgs", "--objective", "cc-ibp").startswith("runs/tiny-rgs-cc-ibp-ibp-")
    assert out("--method", "certified", "--objective", "exp-ibp").startswith("runs/tiny-certified-exp-ibp-ibp-")
    assert out("--method", "rgs").startswith("runs/tiny-rgs-ibp-")
    assert out("--method", "taps") != out("--method", "staps")
    config = resolve_config(parse_args(["--config", "tiny", "--method", "staps"]))
    assert config.objective == "staps" and config.method_label == "staps"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--method", "sabr", "--sabr-lambda", "0"], "sabr_lambda must be in (0, 1], got 0.0"),
        (["--method", "staps", "--sabr-lambda", "1.5"], "sabr_lambda must be in (0, 1], got 1.5"),
        (["--method", "cc-ibp", "--method-alpha", "-0.1"], "method_alpha must be in [0, 1], got -0.1"),
        (["--method", "rgs", "--objective", "exp-ibp", "--method-alpha", "2"], "method_alpha must be in [0, 1]"),
        (["--method", "taps", "--relaxation", "crown-ibp"], "relaxation must be ibp or box, got 'crown-ibp'"),
        (["--method", "pgd", "--objective", "sabr"], "objective 'sabr' needs method certified, rgs, pgpe or sabr"),
        (["--method", "sabr", "--objective", "taps"], "objective 'taps' conflicts"),
        (["--method", "mtl-ibp", "--relaxation", "crown-ibp", "--loss-fusion"], "loss_fusion fuses the plain"),
        (["--method", "sabr", "--attack-steps", "0"], "attack_steps must be >= 1"),
        (["--method", "sabr", "--attack-norm", "l2"], "defined for the linf box"),
        (["--objective", "ibp"], "unknown objective 'ibp'"),
        (["--method", "taps", "--taps-split", "8"], "taps_split 8 is out of range for a network of 7 layers"),
        (["--method", "rgs", "--objective", "staps", "--taps-split", "-8"], "taps_split -8 is out of range"),
        (["--method", "taps", "--taps-grad-scale", "-1"], "taps_grad_scale must be >= 0, got -1.0"),
    ],
)
def test_bad_combinations_are_one_line_errors_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["--config", "tiny", *flags, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not out.exists()  # nothing written, nothing loaded
