import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.attacks import classification_margin, pgd, pgd_attack
from jaxcert.bounds import margin_lower_bounds
from jaxcert.nets import Dense, Flatten, forward
from tests.soundness import tiny_params

NET = "mlp"  # tiny MLP from tests/soundness.py, inputs (4, 1) in [0, 1]
BATCH = 8  # one batch shape everywhere, so that compiled attacks are reused across tests


@functools.cache
def net(seed: int):
    return tiny_params(NET, seed)


def setup(seed: int, batch: int = BATCH):
    """A tiny net (one of a few cached parameter draws) and a random batch."""
    arch, in_shape, params = net(seed % 3)
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (batch, *in_shape))
    y = jax.random.randint(ky, (batch,), 0, arch[-1].features)
    return arch, params, x, y


@functools.partial(jax.jit, static_argnums=0)
def _margins(arch, params, x, y):
    return classification_margin(forward(arch, params, x), y)


def margins(arch, params, x, y):
    return np.asarray(_margins(arch, params, x, y))


# ---------------------------------------------------------------- the threat model is respected


@pytest.mark.parametrize("norm", ["linf", "l2"])
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.5), lo=st.sampled_from([0.0, 0.2]))
def test_pgd_stays_in_the_ball_and_the_data_range(norm, seed, eps, lo):
    arch, params, x, y = setup(seed)
    x = jnp.clip(x, lo, 1.0)
    x_adv = pgd_attack(arch, params, x, y, eps, key=jax.random.key(seed), norm=norm, steps=5, restarts=2, lo=lo)
    delta = np.asarray(x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps * (1 + 1e-5) + 1e-6), (size.max(), eps)
    assert float(x_adv.min()) >= lo and float(x_adv.max()) <= 1.0


def test_pgd_with_zero_eps_returns_the_input():
    arch, params, x, y = setup(0)
    for norm in ("linf", "l2"):
        np.testing.assert_array_equal(pgd_attack(arch, params, x, y, 0.0, key=jax.random.key(1), norm=norm), x)


def test_pgd_accepts_one_eps_per_example():
    arch, params, x, y = setup(1)
    eps = jnp.linspace(0.0, 0.2, len(x))
    x_adv = pgd_attack(arch, params, x, y, eps, key=jax.random.key(0), steps=5)
    assert np.all(np.abs(np.asarray(x_adv - x)).reshape(len(x), -1).max(1) <= np.asarray(eps) + 1e-6)


# ---------------------------------------------------------------- optimality on a linear classifier


def linear_problem(seed: int, dim: int = 12, batch: int = BATCH):
    rng = np.random.default_rng(seed)
    arch = (Flatten(), Dense(2))
    params = [{}, {"kernel": jnp.asarray(rng.standard_normal((dim, 2)), jnp.float32), "bias": jnp.zeros(2)}]
    x = jnp.asarray(rng.uniform(size=(batch, dim)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, batch))
    # margin of class y: s_y · (w·x + b') with w = W[:,1] - W[:,0], s_y = -1 for y = 0
    w = np.asarray(params[1]["kernel"][:, 1] - params[1]["kernel"][:, 0])
    signed_w = np.where(np.asarray(y)[:, None] == 1, w, -w)  # gradient of the margin, per example
    return arch, params, x, y, signed_w


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_finds_the_worst_case_margin_of_a_linear_classifier(norm, loss):
    """Unbounded inputs: min over the ball of w·x is w·x - ε‖w‖₁ (ℓ∞) or w·x - ε‖w‖₂ (ℓ2)."""
    arch, params, x, y, signed_w = linear_problem(0)
    eps = 0.1
    x_adv = pgd_attack(
        arch,
        params,
        x,
        y,
        eps,
        key=jax.random.key(0),
        norm=norm,
        steps=40,
        step_size=eps / 4,
        lo=-jnp.inf,
        hi=jnp.inf,
        loss=loss,
    )
    dual = np.abs(signed_w).sum(1) if norm == "linf" else np.linalg.norm(signed_w, axis=1)
    expected = margins(arch, params, x, y) - eps * dual
    np.testing.assert_allclose(margins(arch, params, x_adv, y), expected, atol=1e-4)


def test_pgd_finds_the_worst_case_margin_with_the_data_range_active():
    """ℓ∞ ball ∩ [0,1]: the minimiser moves every coordinate against sign(w_i) as far as the box allows."""
    arch, params, x, y, signed_w = linear_problem(1)
    eps = 0.3
    x_adv = pgd_attack(arch, params, x, y, eps, key=jax.random.key(0), steps=20, step_size=eps / 4)
    worst_x = np.clip(np.asarray(x) - eps * np.sign(signed_w), 0.0, 1.0)
    expected = margins(arch, params, jnp.asarray(worst_x), y)
    np.testing.assert_allclose(margins(arch, params, x_adv, y), expected, atol=1e-4)


# ---------------------------------------------------------------- restarts, strength, purity


def test_more_restarts_never_give_a_weaker_attack():
    arch, params, x, y = setup(3)
    key = jax.random.key(7)
    one = pgd_attack(arch, params, x, y, 0.15, key=key, steps=2, restarts=1)
    many = pgd_attack(arch, params, x, y, 0.15, key=key, steps=2, restarts=4)
    m_one, m_many = margins(arch, params, one, y), margins(arch, params, many, y)
    assert np.all(m_many <= m_one + 1e-6)
    assert np.any(m_many < m_one - 1e-6)  # the extra restarts did find something better
    assert np.all(m_one <= margins(arch, params, x, y) + 1e-6)  # never worse than the clean point


def test_pgd_beats_random_search_and_respects_certified_bounds():
    arch, params, x, y = setup(4)
    eps = 0.1
    x_adv = pgd_attack(arch, params, x, y, eps, key=jax.random.key(0), steps=20, restarts=3, loss="margin")
    m_pgd = margins(arch, params, x_adv, y)
    noise = jax.random.uniform(jax.random.key(1), (64, *x.shape), minval=-eps, maxval=eps)
    random_points = jnp.clip(x[None] + noise, 0.0, 1.0)
    m_random = margins(arch, params, random_points.reshape(-1, *x.shape[1:]), jnp.tile(y, 64))
    m_random = m_random.reshape(64, len(x)).min(0)
    # PGD is a local method (it can lose on an example whose worst point is in another linear region),
    # but it must beat 64 random points of the ball on most examples and on average
    assert np.mean(m_pgd <= m_random + 1e-5) >= 0.75
    assert np.mean(m_pgd) < np.mean(m_random)
    # a sound lower bound of the margin over the same region is never beaten by an attack
    lb = np.asarray(jax.jit(margin_lower_bounds, static_argnums=0)(arch, params, x, y, eps)).min(1)
    assert np.all(m_pgd >= lb - 1e-5)


def test_pgd_is_pure_and_jittable_with_a_closed_over_model():
    arch, params, x, y = setup(5)
    logits_fn = lambda v: forward(arch, params, v)
    attack = jax.jit(lambda x, y, eps, key: pgd(logits_fn, x, y, eps, key=key, norm="l2", steps=3, restarts=2))
    key = jax.random.key(11)
    a, b = attack(x, y, 0.2, key), attack(x, y, 0.2, key)
    np.testing.assert_array_equal(a, b)
    c = pgd_attack(arch, params, x, y, 0.2, key=key, norm="l2", steps=3, restarts=2)
    np.testing.assert_allclose(a, c, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"norm": "l1"}, "norm"),
        ({"loss": "hinge"}, "loss"),
        ({"restarts": 0}, "restarts"),
        ({"steps": -1}, "steps"),
        ({"eps": -0.1}, "eps"),
    ],
)
def test_pgd_rejects_bad_arguments(kwargs, message):
    arch, params, x, y = setup(0)
    eps = kwargs.pop("eps", 0.1)
    with pytest.raises(ValueError, match=message):
        pgd(lambda v: forward(arch, params, v), x, y, eps, key=jax.random.key(0), **kwargs)
