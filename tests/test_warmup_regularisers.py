"""Shi et al. (2021) warm-up regularisers: bound tightness and ReLU balance from IBP intervals."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.nets import Dense, Flatten, Normalize, ReLU, init_params, split_trainable
from jaxcert.nets.network import merge
from jaxcert.train import certified_objective, recipe_schedule
from jaxcert.train.configs import TrainConfig
from jaxcert.train.warmup_regularisers import relu_balance, warmup_regularisers, warmup_weight

ARCH = (Normalize((0.5,), (0.25,)), Flatten(), Dense(8), ReLU(), Dense(6), ReLU(), Dense(3))
SHAPE = (4, 1)
EPS = 0.02


def setup(seed=0):
    params = init_params(ARCH, SHAPE, seed=seed)
    key = jax.random.key(seed + 7)
    out = []
    for p in params:  # non-zero biases: stably active and stably inactive neurons in every layer
        if "bias" in p:
            key, sub = jax.random.split(key)
            p = {**p, "bias": 0.8 * jax.random.normal(sub, p["bias"].shape)}
        out.append(p)
    x = jax.random.uniform(jax.random.key(seed + 1), (16, *SHAPE))
    y = jax.random.randint(jax.random.key(seed + 2), (16,), 0, 3)
    return out, x, y


def hand_regularisers(params, x, eps, tol):
    """IBP and both regularisers in numpy, straight from the formulas."""
    lo, hi = np.clip(np.asarray(x) - eps, 0, 1), np.clip(np.asarray(x) + eps, 0, 1)
    lo, hi = ((lo - 0.5) / 0.25).reshape(len(x), -1), ((hi - 0.5) / 0.25).reshape(len(x), -1)
    r0 = np.mean((hi - lo) / 2)
    tight, relu, actives, inactives = [], [], [], []
    for k in (2, 4, 6):
        W, b = np.asarray(params[k]["kernel"]), np.asarray(params[k]["bias"])
        c, r = (hi + lo) / 2 @ W + b, (hi - lo) / 2 @ np.abs(W)
        lo, hi = c - r, c + r
        if k == 6:
            break
        tight.append(max(tol - r0 / np.mean(r), 0) / tol)
        active, inactive = lo > 0, hi < 0
        actives.append(active.sum())
        inactives.append(inactive.sum())
        mean_act, mean_inact = np.mean(c * active), np.mean(c * inactive)
        rho_mean = min(mean_act / -mean_inact, -mean_inact / mean_act)
        delta = (c - c.mean()) ** 2
        var_act, var_inact = np.sum(delta * active), np.sum(delta * inactive)
        rho_var = min(var_act / var_inact, var_inact / var_act)
        relu.append((max(tol - rho_mean, 0) + max(tol - rho_var, 0)) / tol)
        lo, hi = np.maximum(lo, 0), np.maximum(hi, 0)
    return np.mean(tight), np.mean(relu), min(actives), min(inactives)


def test_regularisers_match_the_hand_computation():
    params, x, _ = setup()
    tol = 0.9
    tight, relu, n_active, n_inactive = hand_regularisers(params, x, EPS, tol)
    assert n_active > 0 and n_inactive > 0  # the ratios of every layer are defined
    regs = jax.jit(lambda p: warmup_regularisers(ARCH, p, x, EPS, tol))(params)
    np.testing.assert_allclose(regs["reg_tightness"], tight, rtol=1e-5)
    np.testing.assert_allclose(regs["reg_relu"], relu, rtol=1e-4)
    assert float(regs["reg_tightness"]) > 0 and float(regs["reg_relu"]) > 0


def test_relu_balance_of_a_layer_without_stable_neurons_is_zero():
    lower, upper = -jnp.ones((4, 5)), jnp.ones((4, 5))
    assert float(relu_balance((lower, upper), 0.5)) == 0.0
    grad = jax.grad(lambda u: relu_balance((lower, u), 0.5))(upper)
    assert np.all(np.isfinite(grad))


def test_weight_zero_leaves_the_loss_unchanged_and_the_weight_vanishes_at_the_final_eps():
    params, x, y = setup()
    trainable, frozen = split_trainable(params)
    schedule = recipe_schedule(EPS, warmup=2, ramp=10)
    plain = jax.jit(certified_objective(ARCH, "ibp", schedule))
    off = jax.jit(certified_objective(ARCH, "ibp", schedule, reg_weight=0.0))
    on = jax.jit(certified_objective(ARCH, "ibp", schedule, reg_weight=0.5, reg_tol=0.9))
    for step in (0, 5, 12, 20):
        base, aux = plain(trainable, frozen, x, y, step)
        loss_off, aux_off = off(trainable, frozen, x, y, step)
        assert float(loss_off) == float(base) and "reg_tightness" not in aux_off
        loss_on, aux_on = on(trainable, frozen, x, y, step)
        eps = float(aux["eps"])
        expected_weight = 0.5 * (1 - eps / EPS) if 0 < eps < EPS else 0.0
        assert float(aux_on["reg_weight"]) == pytest.approx(expected_weight, abs=1e-6)
        extra = expected_weight * (float(aux_on["reg_tightness"]) + float(aux_on["reg_relu"]))
        np.testing.assert_allclose(loss_on, float(base) + extra, rtol=1e-5)
    assert float(aux_on["reg_weight"]) == 0.0 and float(loss_on) == pytest.approx(float(base))  # after the ramp
    _, mid = on(trainable, frozen, x, y, 7)
    assert float(mid["reg_weight"]) > 0 and float(mid["reg_tightness"]) > 0  # active during the ramp


def test_warmup_weight_schedule():
    assert float(warmup_weight(0.5, 0.0, 0.1)) == 0.0  # clean warm-up: the intervals are points
    assert float(warmup_weight(0.5, 0.025, 0.1)) == pytest.approx(0.375)
    assert float(warmup_weight(0.5, 0.1, 0.1)) == 0.0
    assert float(warmup_weight(0.5, 0.2, 0.1)) == 0.0
    assert float(warmup_weight(0.5, 0.0, 0.0)) == 0.0


@pytest.mark.slow
def test_one_gradient_step_on_each_regulariser_improves_it():
    params, x, _ = setup()
    trainable, frozen = split_trainable(params)

    @functools.partial(jax.jit, static_argnums=1)
    def regs(t, tol):
        return warmup_regularisers(ARCH, merge(t, frozen), x, EPS, tol)

    def step(name, tol, lr):
        grad = jax.jit(jax.grad(lambda t: regs(t, tol)[name]))(trainable)
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, trainable, grad)

    tol = 5.0  # above the tightness of every layer: the hinge is active
    moved = step("reg_tightness", tol, 0.05)
    assert float(regs(moved, tol)["tightness"]) > float(regs(trainable, tol)["tightness"])
    tol = 1.0  # the balance ratios are <= 1: the hinge is active unless perfectly balanced
    moved = step("reg_relu", tol, 1e-3)
    assert float(regs(moved, tol)["reg_relu"]) < float(regs(trainable, tol)["reg_relu"])


def test_bad_regulariser_settings_are_clear_errors():
    schedule = recipe_schedule(EPS)
    with pytest.raises(ValueError, match="reg_weight"):
        TrainConfig(reg_weight=-1.0)
    with pytest.raises(ValueError, match="reg_tol"):
        TrainConfig(reg_tol=0.0)
    with pytest.raises(ValueError, match="certified loss"):
        TrainConfig(reg_weight=0.5, method="standard")
    with pytest.raises(ValueError, match="reg_tol"):
        certified_objective(ARCH, "ibp", schedule, reg_weight=0.5, reg_tol=0.0)
    hand_built = schedule.__class__(schedule.eps, schedule.kappa, schedule.beta)  # no eps_final
    with pytest.raises(ValueError, match="final eps"):
        certified_objective(ARCH, "ibp", hand_built, reg_weight=0.5)
