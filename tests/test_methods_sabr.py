"""SABR: the small adversarial box and its certified loss (jaxcert.train.methods.sabr)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import input_box
from jaxcert.nets import Dense, Flatten, Normalize, ReLU, forward, init_params, split_trainable
from jaxcert.train import certified_objective, recipe_schedule
from jaxcert.train.methods import make_objective
from jaxcert.train.methods.sabr import centred_box, sabr_region
from jaxcert.train.methods.sabr_attack import sabr_pgd, step_schedule

ARCH = (Normalize((0.5,), (0.3,)), Flatten(), Dense(12), ReLU(), Dense(3))
SHAPE = (2, 2, 1)
EPS = 0.2
SCHEDULE = recipe_schedule(EPS)  # no warm-up, no ramp: ε = EPS and κ = 0 from step 0


@pytest.fixture(scope="module")
def problem():
    params = init_params(ARCH, SHAPE, seed=0)
    # pixels at and near the data range's ends, so that the ε-box is clipped
    x = jax.random.uniform(jax.random.key(1), (16, *SHAPE))
    x = x.at[:4].set(0.0).at[4:6].set(1.0).at[6:8].set(0.05)
    y = jnp.arange(16) % 3
    return params, x, y


def region(params, x, y, lam, seed=0, steps=5):
    logits_fn = lambda z: forward(ARCH, params, z)
    return sabr_region(logits_fn, x, y, EPS, lam, jax.random.key(seed), steps=steps)


@pytest.mark.parametrize("lam", [0.1, 0.4, 0.8])
def test_the_small_box_lies_in_the_eps_box_and_the_data_range_with_radius_lambda_h(problem, lam):
    params, x, y = problem
    lower, upper = region(params, x, y, lam)
    big_lo, big_hi = input_box(x, EPS)
    assert np.all(lower >= big_lo) and np.all(upper <= big_hi)  # inside the clipped ε-box
    assert np.all(lower >= 0.0) and np.all(upper <= 1.0)  # inside the data range
    np.testing.assert_allclose(upper - lower, lam * (big_hi - big_lo), atol=1e-6)  # radius λ h, per coordinate
    centre, mid, h = (lower + upper) / 2, (big_lo + big_hi) / 2, (big_hi - big_lo) / 2
    assert np.all(np.abs(centre - mid) <= (1 - lam) * h + 1e-6)  # the centre lies in the shrunk ε-box
    assert float(jnp.max(upper - lower)) > 0.0


def test_the_pgd_steps_decay_as_in_the_reference():
    # 8 steps (the reference's default): 0.5 ε until step ⌈4⌉, ×0.1 from ⌈6.4⌉ = 7 and again from ⌈7.2⌉ = 8
    np.testing.assert_allclose(step_schedule(8), [0.5, 0.5, 0.5, 0.5, 0.05, 0.05, 0.05, 0.005], rtol=1e-6)
    np.testing.assert_allclose(step_schedule(10, 1.0), [1] * 5 + [0.1] * 3 + [0.01] + [0.001], rtol=1e-6)
    np.testing.assert_allclose(step_schedule(1), [0.5])
    with pytest.raises(ValueError, match="steps >= 1"):
        step_schedule(0)


def test_the_attack_point_is_the_iterate_of_largest_ce_in_the_eps_box(problem):
    params, x, y = problem
    logits_fn = lambda z: forward(ARCH, params, z)
    lower, upper = input_box(x, EPS)
    point = sabr_pgd(logits_fn, lower, upper, y, EPS, jax.random.key(0), steps=8)
    assert np.all(point >= lower) and np.all(point <= upper)
    ce = lambda z: jax.nn.logsumexp(logits_fn(z), -1) - jnp.take_along_axis(logits_fn(z), y[:, None], 1)[:, 0]
    start = lower + jax.random.uniform(jax.random.key(0), lower.shape) * (upper - lower)  # the attack's start
    assert np.all(ce(point) >= ce(start) - 1e-6)  # never worse than the start: the best iterate is kept
    assert float(jnp.mean(ce(point) - ce(x))) > 1e-3  # and clearly adversarial on average
    one = sabr_pgd(logits_fn, lower, upper, y, EPS, jax.random.key(0), steps=1)  # more steps find more
    assert float(jnp.mean(ce(point))) >= float(jnp.mean(ce(one))) - 1e-6


def test_the_small_box_is_centred_at_the_attack_point_moved_inside(problem):
    params, x, y = problem
    lam = 0.3
    lower, upper = region(params, x, y, lam, steps=8)
    big_lo, big_hi = input_box(x, EPS)
    point = sabr_pgd(lambda z: forward(ARCH, params, z), big_lo, big_hi, y, EPS, jax.random.key(0), steps=8)
    radius = lam * (big_hi - big_lo) / 2
    inside = (point >= big_lo + radius) & (point <= big_hi - radius)
    centre = (lower + upper) / 2
    np.testing.assert_allclose(np.where(inside, centre, 0.0), np.where(inside, point, 0.0), atol=1e-6)
    assert bool(jnp.any(inside)) and bool(jnp.any(~inside))


def test_centred_box_projects_the_point_onto_the_shrunk_box():
    lower, upper = jnp.zeros(4), jnp.array([1.0, 2.0, 0.5, 0.0])
    point = jnp.array([0.0, 2.0, 0.25, 0.0])
    lo, hi = centred_box(lower, upper, point, 0.5)  # radius 0.5 h = (0.25, 0.5, 0.125, 0)
    np.testing.assert_allclose(lo, [0.0, 1.0, 0.125, 0.0])
    np.testing.assert_allclose(hi, [0.5, 2.0, 0.375, 0.0])
    lo1, hi1 = centred_box(lower, upper, point, 1.0)
    assert np.array_equal(lo1, lower) and np.array_equal(hi1, upper)


@pytest.mark.parametrize("relaxation", ["ibp", "crown-ibp", "deeppoly"])
@pytest.mark.slow
def test_lambda_one_is_the_relaxations_certified_loss_on_the_whole_box(problem, relaxation):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    schedule = recipe_schedule(EPS, beta_final=0.5)  # β matters for crown-ibp
    sabr = make_objective("sabr", ARCH, relaxation, schedule, sabr_lambda=1.0, attack_steps=3)
    plain = certified_objective(ARCH, relaxation, schedule)
    (l_sabr, aux), g_sabr = jax.value_and_grad(sabr, has_aux=True)(trainable, frozen, x, y, 2)
    (l_plain, plain_aux), g_plain = jax.value_and_grad(plain, has_aux=True)(trainable, frozen, x, y, 2)
    np.testing.assert_allclose(l_sabr, l_plain, rtol=1e-6)
    np.testing.assert_allclose(aux["sabr_acc"], plain_aux["cert_acc"])
    for a, b in zip(jax.tree_util.tree_leaves(g_sabr), jax.tree_util.tree_leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # a smaller box gives a smaller (less pessimistic) loss than the whole box
    small = make_objective("sabr", ARCH, relaxation, schedule, sabr_lambda=0.2, attack_steps=3)
    assert float(small(trainable, frozen, x, y, 2)[0]) < float(l_plain)


def test_sabr_uses_the_scheduled_eps(problem):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    ramp = recipe_schedule(EPS, warmup=2, ramp=10, kappa_final=0.0)
    sabr = jax.jit(make_objective("sabr", ARCH, "ibp", ramp, sabr_lambda=0.5, attack_steps=3))
    plain = jax.jit(certified_objective(ARCH, "ibp", ramp))
    losses = [float(sabr(trainable, frozen, x, y, s)[0]) for s in (0, 5, 12)]
    assert losses[0] == pytest.approx(float(plain(trainable, frozen, x, y, 0)[0]), rel=1e-6)  # ε = 0: clean
    assert losses[0] < losses[1] < losses[2]  # the box grows with ε_t
    assert float(sabr(trainable, frozen, x, y, 5)[1]["eps"]) == pytest.approx(EPS * 3 / 10)


def test_sabr_gradients_are_finite_and_reach_every_layer(problem):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    sabr = make_objective("sabr", ARCH, "ibp", SCHEDULE, sabr_lambda=0.4, attack_steps=5)
    grads = jax.jit(jax.grad(lambda t: sabr(t, frozen, x, y, 1)[0]))(trainable)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


@pytest.mark.parametrize("method", ["sabr", "mtl-ibp"])
def test_alpha_crown_steps_reach_the_relaxation_apart_from_the_attack_steps(problem, method):
    # ``steps`` is alpha-CROWN's option; the inner attack's steps are ``attack_steps`` (once a TypeError)
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    losses = {}
    for alpha_steps in (0, 5):
        objective = make_objective(method, ARCH, "alpha-crown", SCHEDULE, attack_steps=2, steps=alpha_steps)
        losses[alpha_steps] = float(objective(trainable, frozen, x, y, 1)[0])
    assert np.isfinite(losses[0]) and losses[5] <= losses[0] + 1e-6  # optimised slopes: never a looser loss
