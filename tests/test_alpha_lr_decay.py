"""alpha-CROWN's learning-rate decay (option ``lr_decay``, default 0.98 as auto_LiRPA's ExponentialLR): the
schedule ``lr · lr_decay^t`` itself, soundness (sampled points, vertices, the exact MILP), tighter than a
constant learning rate where the best slopes are interior, and one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import get_relaxation
from jaxcert.bounds.exact import exact_bounds
from jaxcert.bounds.slope_ascent import projected_ascent, tracked_ascent
from jaxcert.crown_options import CrownOptions
from tests.soundness import NET_NAMES, assert_sound
from tests.test_alpha_crown_intermediate import DEEP, deep_box
from tests.test_alpha_start_nodes import CONFLICT, conflict_params
from tests.test_crown import example_box


def schedule_sum(lr: float, decay: float, steps: int) -> float:
    """``Σ_{t<steps} lr · decay^t``: how far Adam moves a slope whose gradient never changes sign or size."""
    return lr * sum(decay**t for t in range(steps))


@pytest.mark.parametrize("decay", [1.0, 0.98, 0.5])
def test_each_adam_step_moves_a_slope_by_lr_times_decay_to_the_step(decay):
    """A constant gradient makes Adam's normalised step 1, so after T steps from 0 a slope sits at
    Σ_t lr · decay^t, below the clip at 1; every row keeps its last (best) slopes."""
    weights = jnp.array([[1.0, 2.0, 0.5]])  # (B, R): each row's bound rises with its slope
    objective = lambda s: weights * s
    lr, steps = 0.03, 7
    start = jnp.zeros((1, 3))
    expected = schedule_sum(lr, decay, steps - 1)  # the best is the value before the last update
    best = projected_ascent(objective, start, steps, lr, lr_decay=decay)
    np.testing.assert_allclose(best, expected, rtol=1e-4)
    tracked, _, best_value = tracked_ascent(
        lambda s, st: (objective(s), (objective(s), st)), start, 0, steps, lr, decay
    )
    np.testing.assert_allclose(tracked, expected, rtol=1e-4)
    np.testing.assert_allclose(best_value, weights * expected, rtol=1e-4)
    if decay < 1:  # the decay shows: less than the constant schedule's (steps - 1) · lr
        assert float(best[0, 0]) < schedule_sum(lr, 1.0, steps - 1) - 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
def test_decayed_learning_rates_are_sound_on_sampled_points_and_vertices(net):
    for relaxation in ("alpha-crown", "alpha-crown-full"):
        for decay in (0.5, 0.98):
            assert_sound(relaxation, net, 3, 0.15, steps=6, lr=0.3, lr_decay=decay)


@pytest.mark.slow
def test_decayed_alpha_crown_lies_between_crown_and_the_exact_bounds():
    params, lo, hi, C = deep_box(3, batch=2)
    fn = get_relaxation("alpha-crown-full")
    run = jax.jit(
        lambda p: (
            [fn(DEEP, p, lo, hi, C, steps=10, lr_decay=d) for d in (0.98, 0.8)],
            get_relaxation("crown")(DEEP, p, lo, hi, C),
        )
    )
    decayed, (crown_lb, crown_ub) = run(params)
    exact_lb, exact_ub = exact_bounds(DEEP, params, lo, hi, C)
    for lb, ub in decayed:
        assert np.all(lb <= exact_lb + 1e-4) and np.all(ub >= exact_ub - 1e-4)
        assert np.all(lb >= crown_lb - 1e-5) and np.all(ub <= crown_ub + 1e-5)
        assert np.sum(lb - crown_lb) + np.sum(crown_ub - ub) > 1e-2


@pytest.mark.slow
def test_the_decayed_default_is_tighter_than_a_constant_rate_where_the_best_slopes_are_interior():
    """On CONFLICT the best per-start-node slopes are (0.3, 0.7), inside [0, 1]: Adam at a constant lr = 0.1
    circles around them; the default decay (0.98, the reference's) settles closer in the same 20 steps."""
    params, lo, hi = conflict_params(), -jnp.ones((1, 2)), jnp.ones((1, 2))
    fn = get_relaxation("alpha-crown-full")
    run = jax.jit(
        lambda p: [fn(CONFLICT, p, lo, hi, None, steps=20, start_nodes=True, **o) for o in ({}, {"lr_decay": 1.0})]
    )
    (lb, ub), (const_lb, const_ub) = run(params)
    exact_lb, exact_ub = exact_bounds(CONFLICT, params, lo, hi, None)
    assert np.all(lb >= const_lb) and np.all(ub <= const_ub)  # never looser on any row
    assert float(np.max(lb - const_lb)) > 5e-4, (lb, const_lb)  # and tighter where it matters
    assert np.all(lb <= exact_lb + 1e-5) and np.all(ub >= exact_ub - 1e-5)


def test_bad_decays_give_one_line_errors():
    arch, params, lo, hi, C = example_box("mlp", 0, 0.1)
    for name in ("alpha-crown", "alpha-crown-full"):
        for decay in (0.0, 1.5, -0.1):
            with pytest.raises(ValueError, match=r"^alpha-crown: lr_decay must be in \(0, 1\], got") as err:
                jax.eval_shape(lambda p, d=decay, n=name: get_relaxation(n)(arch, p, lo, hi, C, lr_decay=d), params)
            assert "\n" not in str(err.value)
    assert CrownOptions.parse(["lr_decay=0.9"]).lr_decay == 0.9
    with pytest.raises(ValueError, match=r"relaxation option lr_decay must be a number in \(0, 1\]"):
        CrownOptions.parse(["lr_decay=2"])
