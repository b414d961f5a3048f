"""MTL-IBP, CC-IBP and EXP-IBP (jaxcert.train.methods.expressive)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcert.nets import Dense, Flatten, Normalize, ReLU, init_params, split_trainable
from jaxcert.train import adversarial_trainer, certified_objective, recipe_schedule
from jaxcert.train.methods import make_objective
from jaxcert.train.methods.expressive import EXPRESSIVE_STEP, cc_margins, exp_loss, mtl_loss
from jaxcert.train.methods.objective import step_key

ARCH = (Normalize((0.5,), (0.3,)), Flatten(), Dense(12), ReLU(), Dense(3))
SHAPE = (2, 2, 1)
EPS, STEPS = 0.1, 4
SCHEDULE = recipe_schedule(EPS)  # ε = EPS and κ = 0 from step 0
KINDS = ("mtl-ibp", "cc-ibp", "exp-ibp")


@pytest.fixture(scope="module")
def problem():
    params = init_params(ARCH, SHAPE, seed=0)
    x = jax.random.uniform(jax.random.key(2), (16, *SHAPE))
    return params, x, jnp.arange(16) % 3


def objective(kind, alpha, **kw):
    return make_objective(kind, ARCH, "ibp", SCHEDULE, method_alpha=alpha, attack_steps=STEPS, **kw)


def grads_close(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-7)


@pytest.fixture(scope="module")
def pgd_training(problem):
    """Loss and gradient norm of one PGD-training step (same attack: steps, step size, key)."""
    params, x, y = problem
    trainer = adversarial_trainer(
        ARCH, optax.sgd(0.0), SCHEDULE, attack_steps=STEPS, step_size=EXPRESSIVE_STEP * EPS, lo=0.0, hi=1.0
    )
    _, metrics = trainer.step(trainer.init(params), x, y, step_key(0, 0))
    return float(metrics["loss"]), float(metrics["grad_norm"]), float(metrics["adv_loss"])


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_zero_is_pgd_training(problem, pgd_training, kind):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    (loss, aux), grads = jax.jit(jax.value_and_grad(objective(kind, 0.0), has_aux=True))(trainable, frozen, x, y, 0)
    pgd_loss, pgd_grad_norm, pgd_adv = pgd_training
    assert float(loss) == pytest.approx(pgd_loss, rel=1e-5)
    assert float(aux["adv_loss"]) == pytest.approx(pgd_adv, rel=1e-5)
    assert float(optax.tree.norm(grads)) == pytest.approx(pgd_grad_norm, rel=1e-4)
    assert float(aux["cert_loss"]) > float(loss) + 1e-3  # the IBP loss is computed, and weighs nothing


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_alpha_one_is_the_ibp_loss(problem, kind):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    ibp = certified_objective(ARCH, "ibp", SCHEDULE)
    (loss, aux), grads = jax.value_and_grad(objective(kind, 1.0), has_aux=True)(trainable, frozen, x, y, 0)
    (ibp_loss, ibp_aux), ibp_grads = jax.value_and_grad(ibp, has_aux=True)(trainable, frozen, x, y, 0)
    np.testing.assert_allclose(loss, ibp_loss, rtol=1e-6)
    np.testing.assert_allclose(aux["cert_acc"], ibp_aux["cert_acc"])
    grads_close(grads, ibp_grads)


@pytest.mark.parametrize("kind", KINDS)
def test_intermediate_alpha_lies_between_the_pgd_and_ibp_losses_with_finite_gradients(problem, kind):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    (loss, aux), grads = jax.jit(jax.value_and_grad(objective(kind, 0.5), has_aux=True))(trainable, frozen, x, y, 0)
    assert float(aux["adv_loss"]) < float(loss) < float(aux["cert_loss"])
    assert all(np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree_util.tree_leaves(grads))


def test_the_combinations_formulas():
    adv, ver = jnp.float32(0.5), jnp.float32(2.0)
    assert float(mtl_loss(adv, ver, 0.25)) == pytest.approx(0.75 * 0.5 + 0.25 * 2.0)
    assert float(exp_loss(adv, ver, 0.5)) == pytest.approx(1.0)  # sqrt(0.5 · 2)
    assert float(exp_loss(adv, ver, 0.25)) == pytest.approx(0.5**0.75 * 2.0**0.25, rel=1e-6)
    d, lb = jnp.array([[3.0, -1.0]]), jnp.array([[-2.0, -4.0]])
    np.testing.assert_allclose(cc_margins(d, lb, 0.25), [[1.75, -1.75]])


def test_cc_ibp_takes_the_cross_entropy_of_the_combined_logit_differences():
    """CE_cert(v) = log(1 + Σ exp(-v)): convex in the margins, so CC-IBP's loss is at most MTL-IBP's."""
    from jaxcert.bounds import certified_cross_entropy

    d = jax.random.normal(jax.random.key(0), (64, 5)) * 3
    lb = d - jnp.abs(jax.random.normal(jax.random.key(1), (64, 5))) * 4
    for alpha in (0.1, 0.5, 0.9):
        cc = certified_cross_entropy(cc_margins(d, lb, alpha))
        mtl = mtl_loss(certified_cross_entropy(d), certified_cross_entropy(lb), alpha)
        assert np.all(cc <= mtl + 1e-5) and float(jnp.mean(mtl - cc)) > 1e-3


def test_exp_ibp_gradient_is_finite_when_a_loss_underflows_to_zero():
    grad = jax.grad(lambda a, v: exp_loss(a, v, 0.5), argnums=(0, 1))(jnp.float32(0.0), jnp.float32(0.3))
    assert all(np.isfinite(float(g)) for g in grad)
    grad0 = jax.grad(lambda v: exp_loss(jnp.float32(1.0), v, 0.0))(jnp.float32(0.0))
    assert float(grad0) == 0.0


@pytest.mark.slow
def test_expressive_losses_accept_another_relaxation_and_use_its_beta(problem):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    schedule = recipe_schedule(EPS, warmup=1, ramp=4, beta_final=0.0)
    mtl = make_objective("mtl-ibp", ARCH, "crown-ibp", schedule, method_alpha=1.0, attack_steps=2)
    plain = certified_objective(ARCH, "crown-ibp", schedule)
    for step in (2, 5):
        (loss, aux), (ref, ref_aux) = mtl(trainable, frozen, x, y, step), plain(trainable, frozen, x, y, step)
        np.testing.assert_allclose(loss, ref, rtol=1e-6)
        assert float(aux["beta"]) == pytest.approx(float(ref_aux["beta"]))
