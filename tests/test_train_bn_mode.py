"""BatchNorm in training mode (bn_mode="batch"): the clean batch's statistics in the forward pass and the
bounds, differentiable in the weights; running statistics still updated for evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcert.bounds import certified_cross_entropy, cross_entropy, margin_lower_bounds
from jaxcert.nets import BatchNorm, Conv, Dense, Flatten, Normalize, ReLU, forward, init_params, split_trainable
from jaxcert.nets.network import merge
from jaxcert.train import (
    certified_objective,
    certified_trainer,
    clean_objective,
    pgpe_trainer,
    population_fitness,
    recipe_schedule,
    rgs_trainer,
    standard_trainer,
)
from jaxcert.train.batch_norm import batch_stats
from jaxcert.train.configs import TrainConfig

ARCH = (Normalize((0.5,), (0.3,)), Conv(4, 3, 1, 0), BatchNorm(), ReLU(), Flatten(), Dense(3))
SHAPE = (4, 4, 1)
EPS = 0.05
SCHEDULE = recipe_schedule(EPS, kappa_final=0.5)  # no ramp: eps = 0.05, kappa = 0.5 from step 0


def problem(n=24, seed=0):
    x = jax.random.uniform(jax.random.key(seed), (n, *SHAPE))
    s = jnp.mean(x, axis=(1, 2, 3))
    return x, (s > 0.45).astype(jnp.int32) + (s > 0.55).astype(jnp.int32)


def setup():
    params = init_params(ARCH, SHAPE, seed=0)
    trainable, frozen = split_trainable(params)
    return trainable, frozen, *problem()


def hand_stats(trainable, frozen, x):
    """Mean/var of the conv output over batch and space, by hand."""
    h = forward(ARCH[:2], merge(trainable, frozen)[:2], x)
    return jnp.mean(h, axis=(0, 1, 2)), jnp.var(h, axis=(0, 1, 2))


def with_stats(trainable, frozen, mean, var):
    return [*frozen[:2], {"mean": mean, "var": var}, *frozen[3:]]


@pytest.mark.slow
def test_batch_objective_equals_the_hand_computation_with_batch_statistics():
    trainable, frozen, x, y = setup()
    mean, var = hand_stats(trainable, frozen, x)
    params = merge(trainable, with_stats(trainable, frozen, mean, var))
    h = forward(ARCH[:2], params[:2], x)
    p = params[2]
    z = jax.nn.relu((h - mean) / jnp.sqrt(var + ARCH[2].eps) * p["scale"] + p["bias"])  # train-mode BatchNorm
    logits = z.reshape(len(x), -1) @ params[5]["kernel"] + params[5]["bias"]
    np.testing.assert_allclose(forward(ARCH, params, x), logits, rtol=1e-5, atol=1e-5)
    ce = jnp.mean(cross_entropy(logits, y))
    cert = jnp.mean(certified_cross_entropy(margin_lower_bounds(ARCH, params, x, y, EPS)))
    loss, aux = jax.jit(certified_objective(ARCH, "ibp", SCHEDULE, bn_mode="batch"))(trainable, frozen, x, y, 0)
    np.testing.assert_allclose(aux["clean_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(aux["cert_loss"], cert, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * ce + 0.5 * cert, rtol=1e-5)
    eval_loss, _ = jax.jit(certified_objective(ARCH, "ibp", SCHEDULE))(trainable, frozen, x, y, 0)
    assert abs(float(eval_loss) - float(loss)) > 1e-3  # running stats (0, 1) differ from the batch's
    clean, _ = clean_objective(ARCH, bn_mode="batch")(trainable, frozen, x, y, 0)
    np.testing.assert_allclose(clean, ce, rtol=1e-5)


@pytest.mark.slow
def test_gradients_flow_through_the_batch_statistics():
    trainable, frozen, x, y = setup()
    objective = certified_objective(ARCH, "ibp", SCHEDULE, bn_mode="batch")
    grad = jax.jit(jax.grad(lambda t: objective(t, frozen, x, y, 0)[0]))(trainable)
    eval_objective = certified_objective(ARCH, "ibp", SCHEDULE)

    def fixed_stats(t):  # the same batch statistics, but held constant
        stats = jax.lax.stop_gradient(batch_stats(ARCH, t, frozen, x))
        return eval_objective(t, stats, x, y, 0)[0]

    grad_fixed = jax.jit(jax.grad(fixed_stats))(trainable)
    grad_eval = jax.jit(jax.grad(lambda t: eval_objective(t, frozen, x, y, 0)[0]))(trainable)
    kernel = grad[1]["kernel"]
    assert np.all(np.isfinite(kernel))
    assert not np.allclose(kernel, grad_fixed[1]["kernel"], atol=1e-6)  # d(stats)/d(kernel) contributes
    assert not np.allclose(kernel, grad_eval[1]["kernel"], atol=1e-6)
    # through the normalised activations the conv bias cancels exactly: its gradient vanishes
    np.testing.assert_allclose(grad[1]["bias"], 0.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("relaxation", ["ibp", "crown-ibp", "deeppoly"])
def test_bounds_with_batch_statistics_are_sound_for_that_network(relaxation):
    trainable, frozen, x, y = setup()
    params = merge(trainable, batch_stats(ARCH, trainable, frozen, x))
    lb = margin_lower_bounds(ARCH, params, x, y, EPS, relaxation=relaxation)
    noise = jax.random.uniform(jax.random.key(1), (64, *x.shape), minval=-EPS, maxval=EPS)
    points = jnp.clip(x[None] + noise, 0.0, 1.0).reshape(-1, *SHAPE)
    logits = forward(ARCH, params, points).reshape(64, len(x), 3)
    gaps = jnp.take_along_axis(logits, y[None, :, None], axis=-1) - logits  # z_y - z_j, (samples, B, 3)
    others = np.array([[j for j in range(3) if j != c] for c in np.asarray(y)])  # j != y, in order
    margins = jnp.take_along_axis(gaps, others[None], axis=-1)
    assert float(jnp.min(margins - lb[None])) >= -1e-4


def test_running_stats_are_still_updated_by_the_ema():
    trainable, frozen, x, y = setup()
    params = merge(trainable, frozen)
    trainer = certified_trainer(ARCH, "ibp", optax.adam(1e-2), SCHEDULE, bn_mode="batch", bn_momentum=0.5)
    state, _ = trainer.step(trainer.init(params), x, y, jax.random.key(0))
    mean, var = hand_stats(trainable, frozen, x)
    np.testing.assert_allclose(state.frozen[2]["mean"], 0.5 * frozen[2]["mean"] + 0.5 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.frozen[2]["var"], 0.5 * frozen[2]["var"] + 0.5 * var, rtol=1e-5, atol=1e-6)


def test_gls_members_use_their_own_batch_statistics():
    trainable, frozen, x, y = setup()
    objective = certified_objective(ARCH, "ibp", SCHEDULE, bn_mode="batch")
    members = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.3 * a]), trainable)
    fitness, _ = jax.jit(population_fitness(objective))(members, frozen, x, y, 0)
    eval_objective = jax.jit(certified_objective(ARCH, "ibp", SCHEDULE))
    for j in range(2):
        member = jax.tree_util.tree_map(lambda a, j=j: a[j], members)
        expected, _ = eval_objective(member, batch_stats(ARCH, member, frozen, x), x, y, 0)
        np.testing.assert_allclose(fitness[j], expected, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["standard", "certified", "rgs", "pgpe"])
def test_short_training_in_batch_mode_runs_with_each_trainer(method):
    trainable, frozen, x, y = setup()
    params = merge(trainable, frozen)
    objective = certified_objective(ARCH, "ibp", SCHEDULE, bn_mode="batch")
    trainer = {
        "standard": lambda: standard_trainer(ARCH, optax.adam(1e-2), bn_mode="batch"),
        "certified": lambda: certified_trainer(ARCH, "ibp", optax.adam(1e-2), SCHEDULE, bn_mode="batch"),
        "rgs": lambda: rgs_trainer(ARCH, objective, optax.adam(1e-2), sigma=0.01, samples=2),
        "pgpe": lambda: pgpe_trainer(ARCH, objective, params, optax.sgd(1e-2), sigma=0.01, population=4),
    }[method]()
    state = trainer.init(params)
    for i in range(3):
        state, metrics = trainer.step(state, x, y, jax.random.key(i))
        assert np.isfinite(float(metrics["loss"]))
    assert not np.allclose(state.frozen[2]["mean"], frozen[2]["mean"])  # running statistics moved
    assert int(state.step) == 3


def test_bn_mode_is_checked():
    with pytest.raises(ValueError, match="bn_mode"):
        TrainConfig(bn_mode="train")
    with pytest.raises(ValueError, match="pgd"):
        TrainConfig(bn_mode="batch", method="pgd")
    with pytest.raises(ValueError, match="bn_mode"):
        certified_objective(ARCH, "ibp", SCHEDULE, bn_mode="train")
