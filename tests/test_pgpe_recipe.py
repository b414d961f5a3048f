"""The PGPE recipe: mean optimisers (ClipUp, SGD, Adam, weight decay), leaf-relative σ, loss at the mean."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcert.nets import Dense, Flatten, Normalize, ReLU, init_params, split_trainable
from jaxcert.train import certified_objective, pgpe_trainer, recipe_schedule, rgs_trainer
from jaxcert.train.configs import TrainConfig
from jaxcert.train.es_optimizers import clipup, mean_optimizer
from jaxcert.train.sigma import broadcast_sigma, leaf_scales, relative_sigma

ARCH = (Normalize((0.5,), (0.3,)), Flatten(), Dense(12), ReLU(), Dense(3))
OBJECTIVE = certified_objective(ARCH, "ibp", recipe_schedule(0.03, kappa_final=0.0))


@pytest.fixture(scope="module")
def problem():
    params = init_params(ARCH, (2, 2, 1), seed=0)
    trainable, frozen = split_trainable(params)
    x = jax.random.uniform(jax.random.key(1), (24, 2, 2, 1))
    y = jnp.arange(24) % 3
    return params, trainable, frozen, x, y


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def test_leaf_scales_are_the_init_std_with_the_kernel_scale_for_constant_biases(problem):
    _, trainable, *_ = problem
    scales = leaf_scales(trainable)
    for layer, scale in zip(trainable, scales, strict=True):
        if "kernel" in layer:
            assert scale["kernel"] == pytest.approx(float(np.std(layer["kernel"])))
            assert float(np.std(layer["bias"])) == 0.0  # flax zero-initialises biases
            assert scale["bias"] == scale["kernel"]
    assert leaf_scales([{"scale": jnp.ones(4), "bias": jnp.zeros(4)}]) == [{"scale": 1.0, "bias": 1.0}]
    sigma = relative_sigma(trainable, 0.1)
    assert sigma[2]["kernel"] == pytest.approx(0.1 * float(np.std(trainable[2]["kernel"])))
    with pytest.raises(ValueError, match="sigma_rel must be > 0"):
        relative_sigma(trainable, 0.0)


@pytest.mark.slow
def test_relative_sigma_with_unit_scales_is_the_absolute_sigma(problem):
    params, trainable, _, x, y = problem
    ones = jax.tree_util.tree_map(lambda _: 1.0, leaf_scales(trainable))
    relative = relative_sigma(trainable, 0.05, scales=ones)
    key = jax.random.key(4)
    for make in (
        lambda s: pgpe_trainer(ARCH, OBJECTIVE, params, clipup(0.02, 0.04), sigma=s, population=8, std_lr=0.1),
        lambda s: rgs_trainer(ARCH, OBJECTIVE, optax.sgd(0.1), sigma=s, samples=4),
    ):
        a, b = make(0.05), make(relative)
        sa, ma = a.step(a.init(params), x, y, key)
        sb, mb = b.step(b.init(params), x, y, key)
        for u, v in zip(leaves(sa.params), leaves(sb.params), strict=True):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(ma["loss"], mb["loss"])
    # and a non-trivial relative sigma really is per coordinate in the evosax state
    sigma = relative_sigma(trainable, 0.1)
    trainer = pgpe_trainer(ARCH, OBJECTIVE, params, clipup(0.02, 0.04), sigma=sigma, population=8)
    std = trainer.init(params).opt_state.std
    expected = jax.flatten_util.ravel_pytree(broadcast_sigma(relative_sigma(trainable, 0.1), trainable))[0]
    np.testing.assert_array_equal(std, expected)
    assert len(np.unique(np.asarray(std))) == 2  # one value per layer (bias = its kernel's scale)


@pytest.mark.slow
def test_the_loss_at_the_mean_is_the_certified_objective_at_the_mean(problem):
    params, trainable, frozen, x, y = problem
    trainer = pgpe_trainer(ARCH, OBJECTIVE, params, clipup(0.05, 0.1), sigma=0.05, population=8)
    state = trainer.init(params)
    single = jax.jit(OBJECTIVE)
    for i in range(2):  # the second generation starts from a moved mean
        loss, aux = single(state.params, state.frozen, x, y, state.step)
        state, metrics = trainer.step(state, x, y, jax.random.key(i))
        np.testing.assert_allclose(metrics["loss_at_mean"], loss, rtol=1e-6)
        np.testing.assert_allclose(metrics["cert_acc_at_mean"], aux["cert_acc"], rtol=1e-6)
        np.testing.assert_allclose(metrics["clean_acc_at_mean"], aux["clean_acc"], rtol=1e-6)
        assert float(metrics["loss_at_mean"]) != float(metrics["loss"])  # not the population mean
    rgs = rgs_trainer(ARCH, OBJECTIVE, optax.adam(1e-2), sigma=0.05, samples=4)
    _, metrics = rgs.step(rgs.init(params), x, y, jax.random.key(0))
    np.testing.assert_allclose(metrics["loss_at_mean"], single(trainable, frozen, x, y, 0)[0], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clipup", "sgd", "adam"])
def test_every_mean_optimizer_trains_jitted(problem, name):
    params, trainable, _, x, y = problem
    lr = {"clipup": 0.05, "sgd": 2.0, "adam": 2e-2}[name]
    sigma = relative_sigma(trainable, 0.2)
    trainer = pgpe_trainer(ARCH, OBJECTIVE, params, mean_optimizer(name, lr, base_lr=lr), sigma=sigma, population=16)
    state = trainer.init(params)
    first = None
    for i in range(25):
        state, metrics = trainer.step(state, x, y, jax.random.key(i))
        first = float(metrics["loss_at_mean"]) if first is None else first
    assert float(metrics["loss_at_mean"]) < 0.9 * first, name


def test_clipup_bounds_the_step_norm_and_weight_decay_is_decoupled(problem):
    _, trainable, *_ = problem
    grads = jax.tree_util.tree_map(lambda p: 100.0 * jnp.ones_like(p), trainable)
    opt = clipup(0.05, 0.08)
    state = opt.init(trainable)
    for _ in range(5):  # the velocity builds up with momentum until the clip holds it at the max speed
        updates, state = opt.update(grads, state, trainable)
        assert float(optax.tree.norm(updates)) <= 0.08 + 1e-6
    assert float(optax.tree.norm(updates)) == pytest.approx(0.08, rel=1e-5)
    plain = mean_optimizer("sgd", 0.1, base_lr=0.1, momentum=0.0)
    decayed = mean_optimizer("sgd", 0.1, base_lr=0.1, momentum=0.0, weight_decay=0.01)
    u0, _ = plain.update(grads, plain.init(trainable), trainable)
    u1, _ = decayed.update(grads, decayed.init(trainable), trainable)
    for a, b, p in zip(leaves(u0), leaves(u1), leaves(trainable), strict=True):
        np.testing.assert_allclose(b, a - 0.01 * p, rtol=1e-6, atol=1e-7)


def test_bad_recipe_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown PGPE optimizer 'rmsprop'"):
        mean_optimizer("rmsprop", 0.1, base_lr=0.1)
    with pytest.raises(ValueError, match="max_speed > 0"):
        clipup(0.1, 0.0)
    with pytest.raises(ValueError, match="unknown pgpe_optimizer"):
        TrainConfig(pgpe_optimizer="rmsprop")
    with pytest.raises(ValueError, match="sigma_rel must be >= 0"):
        TrainConfig(sigma_rel=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(weight_decay=1.5)


def test_cli_flags_set_the_recipe_fields_and_a_missing_warm_start_is_a_clear_error(tmp_path, capsys):
    from jaxcert.train.__main__ import main, parse_args

    args = parse_args(["--pgpe-optimizer", "sgd", "--sigma-rel", "0.2", "--std-lr", "0.1", "--max-speed", "0.3",
                       "--momentum", "0.5", "--weight-decay", "0.01", "--init-from", "runs/x"])  # fmt: skip
    assert (args.pgpe_optimizer, args.sigma_rel, args.std_lr, args.max_speed) == ("sgd", 0.2, 0.1, 0.3)
    assert (args.momentum, args.weight_decay, args.init_from) == (0.5, 0.01, "runs/x")
    missing = tmp_path / "no-run"
    argv = ["--config", "tiny", "--method", "pgpe", "--init-from", str(missing), "--out", str(tmp_path / "o")]
    assert main([*argv, "--no-progress", "--no-eval"]) == 2
    assert f"--init-from '{missing}' does not exist" in capsys.readouterr().err  # refused before any set-up
    missing.mkdir()  # a folder that holds no run
    assert main([*argv, "--no-progress", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "cannot warm-start" in err and "no config.json" in err
