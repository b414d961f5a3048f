import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcert.nets import Dense, Flatten, Normalize, ReLU, init_params, split_trainable
from jaxcert.train import (
    certified_objective,
    gaussian_noise,
    perturb,
    pgpe_trainer,
    plain_gradient,
    recipe_schedule,
    rgs_trainer,
    smoothed_gradient,
)

ARCH = (Normalize((0.5,), (0.3,)), Flatten(), Dense(12), ReLU(), Dense(3))
SHAPE = (2, 2, 1)
SCHEDULE = recipe_schedule(0.03, kappa_final=0.0)
OBJECTIVE = certified_objective(ARCH, "ibp", SCHEDULE)
SAMPLES = 4
SINGLE = jax.jit(OBJECTIVE)
PGPE_SETTINGS = {"sigma": 0.01, "population": 16}


@jax.jit
def rgs_gradient(trainable, frozen, x, y, key, sigma):
    """One compiled RGS estimator for every σ (σ traced)."""
    return smoothed_gradient(OBJECTIVE, sigma=sigma, samples=SAMPLES)(trainable, frozen, x, y, 0, key)


def toy_problem(n=48, seed=0):
    x = jax.random.uniform(jax.random.key(seed), (n, *SHAPE))
    s = jnp.mean(x, axis=(1, 2, 3))
    return x, (s > 0.42).astype(jnp.int32) + (s > 0.58).astype(jnp.int32)


@pytest.fixture(scope="module")
def problem():
    params = init_params(ARCH, SHAPE, seed=0)
    trainable, frozen = split_trainable(params)
    x, y = toy_problem()
    return params, trainable, frozen, x, y


@pytest.fixture(scope="module")
def fixed_pgpe(problem):
    """One compiled fixed-σ PGPE trainer shared by the tests."""
    opt = optax.adam(2e-2)
    return pgpe_trainer(ARCH, OBJECTIVE, problem[0], opt, **PGPE_SETTINGS), opt


def tree_allclose(a, b, **kw):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(u, v, **kw)


@pytest.mark.slow
def test_rgs_gradient_with_zero_sigma_is_the_plain_gradient(problem):
    _, trainable, frozen, x, y = problem
    key = jax.random.key(3)
    _, exact, _ = jax.jit(plain_gradient(OBJECTIVE))(trainable, frozen, x, y, 0, key)
    _, g0, _ = rgs_gradient(trainable, frozen, x, y, key, 0.0)
    tree_allclose(g0, exact, rtol=1e-5, atol=1e-7)
    _, g_small, _ = rgs_gradient(trainable, frozen, x, y, key, 1e-5)
    tree_allclose(g_small, exact, rtol=1e-2, atol=1e-4)
    _, g_big, _ = rgs_gradient(trainable, frozen, x, y, key, 0.3)
    diff = optax.tree.norm(jax.tree_util.tree_map(jnp.subtract, g_big, exact))
    assert float(diff) > 1e-3  # a real perturbation changes the estimate


@pytest.mark.slow
def test_rgs_vmapped_samples_equal_a_python_loop(problem):
    _, trainable, frozen, x, y = problem
    key, sigma, k = jax.random.key(5), 0.05, SAMPLES
    loss, grad, _ = rgs_gradient(trainable, frozen, x, y, key, sigma)
    thetas = perturb(trainable, gaussian_noise(key, trainable, k), sigma)
    single = jax.jit(jax.value_and_grad(OBJECTIVE, has_aux=True))
    losses, grads = [], []
    for i in range(k):
        theta = jax.tree_util.tree_map(lambda a, i=i: a[i], thetas)
        (li, _), gi = single(theta, frozen, x, y, 0)
        losses.append(li)
        grads.append(gi)
    np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
    tree_allclose(grad, jax.tree_util.tree_map(lambda *g: sum(g) / k, *grads), rtol=1e-4, atol=1e-6)


def test_gaussian_noise_shapes_and_antithetic_pairs(problem):
    _, trainable, *_ = problem
    z = gaussian_noise(jax.random.key(0), trainable, 6, antithetic=True)
    for leaf, p in zip(jax.tree_util.tree_leaves(z), jax.tree_util.tree_leaves(trainable), strict=True):
        assert leaf.shape == (6, *p.shape)
        np.testing.assert_array_equal(leaf[:3], -leaf[3:])
    with pytest.raises(ValueError, match="even"):
        smoothed_gradient(OBJECTIVE, sigma=0.1, samples=3, antithetic=True)


@pytest.mark.slow
def test_rgs_training_decreases_the_certified_loss(problem):
    params, _, _, x, y = problem
    trainer = rgs_trainer(ARCH, OBJECTIVE, optax.adam(3e-2), sigma=0.01, samples=4)
    state = trainer.init(params)
    losses = []
    for i in range(30):
        state, m = trainer.step(state, x, y, jax.random.key(i))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_pgpe_step_is_one_evosax_generation_on_the_certified_loss(problem, fixed_pgpe):
    """The jitted step equals ask -> loop over members -> tell done by hand with evosax."""
    params, trainable, frozen, x, y = problem
    trainer, opt = fixed_pgpe
    state = trainer.init(params)
    key = jax.random.key(11)
    new, metrics = trainer.step(state, x, y, key)

    from evosax.algorithms import PGPE

    es = PGPE(PGPE_SETTINGS["population"], solution=trainable, optimizer=opt)
    es_params = es.default_params.replace(std_init=PGPE_SETTINGS["sigma"], std_lr=0.0)
    es_state = es.init(jax.random.key(0), trainable, es_params)
    ask_key, tell_key = jax.random.split(key)
    members, es_state = es.ask(ask_key, es_state, es_params)
    member = lambda i: jax.tree_util.tree_map(lambda a: a[i], members)
    fitness = jnp.stack([SINGLE(member(i), frozen, x, y, 0)[0] for i in range(PGPE_SETTINGS["population"])])
    es_state, _ = es.tell(tell_key, members, fitness, es_state, es_params)
    tree_allclose(new.params, es.get_mean(es_state), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["loss"], jnp.mean(fitness), rtol=1e-5)
    assert not np.allclose(new.params[2]["kernel"], trainable[2]["kernel"])  # the mean moved
    np.testing.assert_allclose(new.opt_state.std, PGPE_SETTINGS["sigma"])  # std_lr = 0: fixed sigma


@pytest.mark.slow
def test_pgpe_training_decreases_the_loss(problem, fixed_pgpe):
    params, _, _, x, y = problem
    trainer, _ = fixed_pgpe
    state = trainer.init(params)
    losses = []
    for i in range(40):
        state, m = trainer.step(state, x, y, jax.random.key(i))
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.slow
def test_pgpe_adapts_sigma_within_the_allowed_change_when_asked(problem):
    params, _, _, x, y = problem
    # a large sigma, so that the loss is curved at the scale of the samples (for a locally linear loss the
    # centred ranks of antithetic pairs cancel and the sigma gradient vanishes)
    adaptive = pgpe_trainer(ARCH, OBJECTIVE, params, optax.adam(2e-2), sigma=0.3, population=8, std_lr=0.2)
    state, _ = adaptive.step(adaptive.init(params), x, y, jax.random.key(0))
    std = np.asarray(state.opt_state.std)
    assert not np.allclose(std, 0.3)
    assert np.all(std >= 0.3 * 0.8 - 1e-7) and np.all(std <= 0.3 * 1.2 + 1e-7)


@pytest.mark.parametrize("kwargs", [{"population": 7}, {"population": 0}, {"sigma": 0.0}, {"std_lr": -1.0}])
def test_pgpe_rejects_bad_settings(problem, kwargs):
    params = problem[0]
    settings = {"sigma": 0.1, "population": 8, **kwargs}
    with pytest.raises(ValueError):
        pgpe_trainer(ARCH, OBJECTIVE, params, optax.adam(1e-2), **settings)
