import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.analysis import (
    add_scaled,
    bias_sweep_example,
    certified_loss_fn,
    gradient_norm,
    gradient_step_landscape,
    perturbation_sensitivity,
    tree_norm,
    zero_frozen,
)
from tests.soundness import tiny_params

EX = bias_sweep_example()
KEY = jax.random.key(0)
#: The sweep example moved to the point where its crossing neuron has u = -l (CROWN's loss jumps there).
AT_JUMP = add_scaled(EX.params, EX.events["u = -l"], EX.direction)
SIGMAS = jnp.array([0.0, 1e-3, 1e-2])


@functools.cache
def loss_fn(relaxation):
    return certified_loss_fn(EX.arch, EX.x, EX.y, EX.eps, relaxation=relaxation)


def half_square(params):
    return 0.5 * sum(jnp.sum(a**2) for a in jax.tree.leaves(params))


def test_sensitivity_vanishes_linearly_for_a_continuous_loss():
    s = perturbation_sensitivity(loss_fn("ibp"), AT_JUMP, KEY, SIGMAS, n_samples=16)
    assert float(s[0]) == 0.0
    assert float(s[1]) > 0
    assert float(s[2] / s[1]) == pytest.approx(10.0, rel=0.1)  # same samples, locally linear loss


def test_sensitivity_stays_finite_at_a_discontinuity():
    # at u = -l half of the perturbations flip CROWN's lower slope: |ΔL| ≈ the jump, however small σ
    s = perturbation_sensitivity(loss_fn("crown"), AT_JUMP, KEY, SIGMAS, n_samples=16)
    ibp = perturbation_sensitivity(loss_fn("ibp"), AT_JUMP, KEY, SIGMAS, n_samples=16)
    assert float(s[0]) == 0.0
    assert float(s[1]) > 0.01 and float(s[1]) > 20 * float(ibp[1])
    assert float(s[2]) < 3 * float(s[1])  # not proportional to σ


def test_gradient_norm_of_a_quadratic_counts_trainable_weights_only():
    _, _, params = tiny_params("bn", 0)
    trainable = zero_frozen(params, params)
    assert float(gradient_norm(half_square, params)) == pytest.approx(float(tree_norm(trainable)), rel=1e-5)
    assert float(tree_norm(trainable)) < float(tree_norm(params))


def test_landscape_of_a_quadratic_along_the_gradient_step():
    # L = ½‖θ‖²: θ_c = θ - cη θ_T (frozen statistics stay), g_c = (1 - cη) θ_T, so cos = 1,
    # ‖g_c - g‖ = cη ‖θ_T‖ and the loss drops by ½‖θ_T‖² (1 - (1 - η)²) over the step.
    _, _, params = tiny_params("bn", 0)
    lr = 0.3
    norm_t = float(tree_norm(zero_frozen(params, params)))
    got = gradient_step_landscape(half_square, params, lr, n_points=5)
    np.testing.assert_allclose(got.cs, jnp.linspace(0, 1, 5))
    np.testing.assert_allclose(got.cosines, 1.0, rtol=1e-5)
    np.testing.assert_allclose(got.gradient_changes, got.cs * lr * norm_t, rtol=1e-4, atol=1e-6)
    assert float(got.loss_variation) == pytest.approx(0.5 * norm_t**2 * (1 - (1 - lr) ** 2), rel=1e-4)
    assert float(got.losses[0]) == pytest.approx(float(half_square(params)), rel=1e-6)
    assert float(got.min_cosine) == pytest.approx(1.0, rel=1e-5)
    assert float(got.max_gradient_change) == pytest.approx(lr * norm_t, rel=1e-4)


def test_landscape_of_a_piecewise_linear_loss_sees_the_kink():
    # L(θ) = |θ₀ - 1| + ...: a gradient step that crosses the kink reverses the gradient's first coordinate
    params = [{"kernel": jnp.array([[1.2, 0.0]]), "bias": jnp.zeros(2)}]
    kink = lambda p: jnp.abs(p[0]["kernel"][0, 0] - 1.0) + jnp.sum(p[0]["bias"])
    short = gradient_step_landscape(kink, params, 0.1, n_points=3)
    long = gradient_step_landscape(kink, params, 0.5, n_points=3)
    assert float(short.min_cosine) == pytest.approx(1.0)
    assert float(long.min_cosine) < float(short.min_cosine)
    assert float(long.max_gradient_change) == pytest.approx(2.0)


def test_landscape_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_points"):
        gradient_step_landscape(half_square, EX.params, 0.1, n_points=1)
    with pytest.raises(ValueError, match="lr"):
        gradient_step_landscape(half_square, EX.params, -0.1)
    with pytest.raises(ValueError, match="sigmas"):
        perturbation_sensitivity(half_square, EX.params, KEY, -1.0)
