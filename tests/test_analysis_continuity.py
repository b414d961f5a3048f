import functools

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.analysis import bias_sweep_example, certified_loss_fn, largest_jump, neighbour_steps, sweep

EX = bias_sweep_example()
TS = EX.ts(201)
SPACING = float(TS[1] - TS[0])

#: Relaxations whose loss jumps on the sweep, and the event (position of the swept neuron) where.
JUMPS_AT = {"crown": "u = -l", "deeppoly": "u = -l", "crown-ibp": "u = -l", "hbox": "l = 0", "crown-zero": "l = 0"}
CONTINUOUS = ["ibp", "deepz", "crown-parallel", "crown-soft"]


@functools.cache
def loss_fn(relaxation):
    return certified_loss_fn(EX.arch, EX.x, EX.y, EX.eps, relaxation=relaxation)


@functools.cache
def sweep_of(relaxation):
    """The coarse sweep's largest jump, and the largest jump of a grid with half the spacing (same number of
    points, so no recompilation) centred where the coarse one found it."""
    fn = loss_fn(relaxation)
    _, coarse = sweep(fn, EX.params, EX.direction, TS)
    half_range = float(TS[-1] - TS[0]) / 4
    fine_ts = jnp.linspace(float(coarse.t) - half_range, float(coarse.t) + half_range, TS.shape[0])
    _, fine = sweep(fn, EX.params, EX.direction, fine_ts)
    return coarse, fine


@pytest.mark.parametrize(("relaxation", "event"), sorted(JUMPS_AT.items()))
def test_discontinuous_relaxation_jumps_where_its_slope_switches(relaxation, event):
    coarse, fine = sweep_of(relaxation)
    assert float(coarse.relative) > 10.0
    assert abs(float(coarse.t) - EX.events[event]) <= SPACING
    # a discontinuity: halving the spacing keeps the step's height (at the same place)
    assert float(fine.size) > 0.8 * float(coarse.size)
    assert abs(float(fine.t) - EX.events[event]) <= SPACING / 2


@pytest.mark.parametrize("relaxation", CONTINUOUS)
def test_continuous_relaxation_has_no_jump(relaxation):
    coarse, fine = sweep_of(relaxation)
    assert float(coarse.relative) < 5.0
    # continuous (piecewise smooth, with kinks): halving the spacing halves the largest step
    assert float(fine.size) < 0.6 * float(coarse.size)


def test_largest_jump_of_a_step_function():
    ts = jnp.linspace(0.0, 1.0, 11)
    values = 0.1 * ts + jnp.where(ts > 0.55, 1.0, 0.0)
    jump = largest_jump(ts, values)
    assert int(jump.index) == 5
    assert float(jump.t) == pytest.approx(0.55)
    assert float(jump.size) == pytest.approx(1.01, rel=1e-5)
    assert float(jump.relative) == pytest.approx(101.0, rel=1e-4)


def test_largest_jump_of_a_line_is_one_step():
    ts = jnp.linspace(-1.0, 1.0, 21)
    jump = largest_jump(ts, 3.0 * ts)
    assert float(jump.relative) == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(neighbour_steps(3.0 * ts), 0.3, rtol=1e-4)


def test_flat_sweep_with_one_jump_reports_a_finite_huge_ratio():
    ts = jnp.linspace(0.0, 1.0, 5)
    jump = largest_jump(ts, jnp.array([0.0, 0.0, 1.0, 1.0, 1.0]))
    assert np.isfinite(float(jump.relative)) and float(jump.relative) > 1e6


def test_largest_jump_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same length"):
        largest_jump(jnp.arange(4.0), jnp.arange(5.0))
    with pytest.raises(ValueError, match=">= 3"):
        largest_jump(jnp.arange(2.0), jnp.arange(2.0))


def test_sweep_example_rejects_an_unstable_reference_neuron():
    with pytest.raises(ValueError, match="eps"):
        bias_sweep_example(x0=0.1, eps=0.2)
