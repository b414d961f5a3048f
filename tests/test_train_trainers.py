import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcert.bounds import certified_cross_entropy, cross_entropy, margin_lower_bounds, relaxation_names
from jaxcert.nets import BatchNorm, Conv, Dense, Flatten, Normalize, ReLU, forward, init_params, merge, split_trainable
from jaxcert.train import (
    RecipeSchedule,
    adversarial_trainer,
    certified_objective,
    certified_trainer,
    l1_penalty,
    linear_ramp,
    recipe_schedule,
    standard_trainer,
)
from jaxcert.train.batch_norm import update_running_stats

ARCH = (Normalize((0.5,), (0.3,)), Flatten(), Dense(16), ReLU(), Dense(3))
BN_ARCH = (Conv(8, 2, 1, 0), BatchNorm(), ReLU(), Flatten(), Dense(3))
SHAPE = (2, 2, 1)


def toy_problem(n=64, seed=0):
    """Three classes separated by the mean brightness of a 2x2 image (learnable, robustly at small eps)."""
    x = jax.random.uniform(jax.random.key(seed), (n, *SHAPE))
    s = jnp.mean(x, axis=(1, 2, 3))
    y = (s > 0.42).astype(jnp.int32) + (s > 0.58).astype(jnp.int32)
    return x, y


def run(trainer, params, x, y, steps):
    state = trainer.init(params)
    history = []
    for i in range(steps):
        state, metrics = trainer.step(state, x, y, jax.random.fold_in(jax.random.key(0), i))
        history.append(float(metrics["loss"]))
    return state, history


@pytest.mark.slow
def test_certified_objective_mixes_clean_and_certified_cross_entropy():
    params = init_params(ARCH, SHAPE, seed=1)
    trainable, frozen = split_trainable(params)
    x, y = toy_problem(16)
    ce = jnp.mean(cross_entropy(forward(ARCH, params, x), y))
    lb = jax.jit(lambda p: margin_lower_bounds(ARCH, p, x, y, 0.1))(params)
    cert = jnp.mean(certified_cross_entropy(lb))
    assert float(cert) > float(ce)
    # constant eps = 0.1 while kappa goes 1 -> 0 over steps 0..4; one compiled objective, step traced
    sched = RecipeSchedule(eps=lambda t: jnp.float32(0.1), kappa=linear_ramp(1.0, 0.0, 0, 4), beta=lambda t: 1.0)
    objective = jax.jit(certified_objective(ARCH, "ibp", sched))
    for step, kappa in ((0, 1.0), (3, 0.25), (4, 0.0)):
        loss, aux = objective(trainable, frozen, x, y, step)
        np.testing.assert_allclose(loss, kappa * ce + (1 - kappa) * cert, rtol=1e-5)
        np.testing.assert_allclose(aux["cert_loss"], cert, rtol=1e-5)
        assert float(aux["kappa"]) == pytest.approx(kappa) and "beta" not in aux
    with_l1, _ = jax.jit(certified_objective(ARCH, "ibp", sched, l1=1e-3))(trainable, frozen, x, y, 4)
    expected_l1 = sum(jnp.abs(p["kernel"]).sum() for p in params if "kernel" in p)
    np.testing.assert_allclose(l1_penalty(trainable), expected_l1, rtol=1e-6)
    np.testing.assert_allclose(with_l1 - cert, 1e-3 * expected_l1, rtol=1e-3)


def test_unknown_relaxation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown relaxation"):
        certified_objective(ARCH, "no-such-bound", recipe_schedule(0.1))


@pytest.mark.skipif("crown-ibp" not in relaxation_names(), reason="crown-ibp not registered yet")
def test_crown_ibp_gets_the_scheduled_beta():
    params = init_params(ARCH, SHAPE, seed=1)
    trainable, frozen = split_trainable(params)
    x, y = toy_problem(16)
    sched = recipe_schedule(0.1, ramp=10, kappa_final=0.0, beta_final=0.0)
    obj = jax.jit(certified_objective(ARCH, "crown-ibp", sched))
    loss_end, aux = obj(trainable, frozen, x, y, 10)
    assert float(aux["beta"]) == 0.0
    ibp = jax.jit(certified_objective(ARCH, "ibp", sched))(trainable, frozen, x, y, 10)[0]
    np.testing.assert_allclose(loss_end, ibp, rtol=1e-5)  # beta = 0: pure IBP bounds


def test_standard_training_decreases_the_loss():
    x, y = toy_problem()
    _, hist = run(standard_trainer(ARCH, optax.adam(3e-2)), init_params(ARCH, SHAPE, seed=0), x, y, 30)
    assert hist[-1] < 0.7 * hist[0]


def test_certified_training_warms_up_clean_then_decreases_the_certified_loss():
    x, y = toy_problem()
    sched = recipe_schedule(0.02, warmup=2, ramp=10, kappa_final=0.0)
    trainer = certified_trainer(ARCH, "ibp", optax.adam(3e-2), sched)
    state = trainer.init(init_params(ARCH, SHAPE, seed=0))
    history = []
    for i in range(50):
        state, m = trainer.step(state, x, y, jax.random.key(i))
        history.append({k: float(v) for k, v in m.items()})
    first = history[0]  # clean warm-up: eps = 0, kappa = 1, and IBP is exact at eps = 0
    assert first["kappa"] == 1.0 and first["eps"] == 0.0
    np.testing.assert_allclose(first["loss"], first["clean_loss"], rtol=1e-6)
    np.testing.assert_allclose(first["cert_loss"], first["clean_loss"], rtol=1e-5)
    assert history[20]["kappa"] == 0.0 and history[20]["eps"] == pytest.approx(0.02)
    assert history[-1]["loss"] < 0.7 * history[20]["loss"]
    lb = jax.jit(lambda p: margin_lower_bounds(ARCH, p, x, y, 0.02))(state.full_params)
    assert float(jnp.mean(jnp.all(lb > 0, -1))) > 0.3
    assert int(state.step) == 50


@pytest.mark.slow
def test_batch_norm_running_stats_follow_the_batch_and_are_not_optimised():
    params = init_params(BN_ARCH, SHAPE, seed=0)
    trainable, frozen = split_trainable(params)
    assert "mean" not in trainable[1] and set(frozen[1]) == {"mean", "var"}
    x, y = toy_problem(32)
    h = forward(BN_ARCH[:1], params[:1], x).reshape(-1, 8)
    full = update_running_stats(BN_ARCH, trainable, frozen, x, momentum=1.0)
    np.testing.assert_allclose(full[1]["mean"], h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full[1]["var"], h.var(0), rtol=1e-5, atol=1e-6)
    half = update_running_stats(BN_ARCH, trainable, frozen, x, momentum=0.5)
    np.testing.assert_allclose(half[1]["mean"], 0.5 * h.mean(0), rtol=1e-5, atol=1e-6)
    trainer = certified_trainer(BN_ARCH, "ibp", optax.adam(1e-2), recipe_schedule(0.01, kappa_final=0.5))
    state, hist = run(trainer, params, x, y, 5)
    assert np.all(np.isfinite(hist))
    assert not np.allclose(state.frozen[1]["mean"], 0.0)  # statistics moved
    assert set(state.params[1]) == {"scale", "bias"}  # only the affine terms are optimised
    merged = merge(state.params, state.frozen)
    assert set(merged[1]) == {"scale", "bias", "mean", "var"}


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.1)])
def test_pgd_training_decreases_the_adversarial_loss(norm, eps):
    x, y = toy_problem()
    trainer = adversarial_trainer(ARCH, optax.adam(3e-2), recipe_schedule(eps), norm=norm, attack_steps=3)
    _, hist = run(trainer, init_params(ARCH, SHAPE, seed=0), x, y, 25)
    assert hist[-1] < 0.8 * hist[0]
    with pytest.raises(ValueError, match="norm"):
        adversarial_trainer(ARCH, optax.adam(1e-2), recipe_schedule(eps), norm="l1")
