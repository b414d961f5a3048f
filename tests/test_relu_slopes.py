import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds.relu_slopes import RULE_NAMES, chord_slope, lower_slope, relu_lines, with_lower_slope

FIXED_RULES = [r for r in RULE_NAMES if r != "given"]


def _random_bounds(seed: int, n: int = 64, scale: float = 2.0):
    """``n`` random intervals ``l ≤ u``: crossing, stable active, stable inactive and degenerate ones."""
    rng = np.random.default_rng(seed)
    a, b = scale * rng.standard_normal((2, n), dtype=np.float32)
    lower, upper = np.minimum(a, b), np.maximum(a, b)
    upper = np.where(rng.random(n) < 0.1, lower, upper)
    return lower, upper, rng.random(n, dtype=np.float32)


@functools.cache
def _violations(rule: str):
    """Jitted: largest violation of ``α x ≤ relu(x) ≤ s x + t`` on a grid of each interval, min and max α."""

    def fn(lower, upper, slopes):
        alpha, s, t = relu_lines(lower, upper, rule, slopes=slopes if rule == "given" else None, gamma=3.0, tau=0.2)
        x = lower[None] + jnp.linspace(0.0, 1.0, 33)[:, None] * (upper - lower)[None]
        y, tol = jax.nn.relu(x), 1e-5 * (1 + jnp.abs(x))
        return jnp.max(alpha * x - y - tol), jnp.max(y - s * x - t - tol), jnp.min(alpha), jnp.max(alpha)

    return jax.jit(fn)


@pytest.mark.parametrize("rule", [*FIXED_RULES, "given"])
@given(seed=st.integers(0, 10_000))
def test_lines_enclose_relu_on_the_interval(rule, seed):
    below, above, alpha_min, alpha_max = _violations(rule)(*_random_bounds(seed))
    assert float(alpha_min) >= 0 and float(alpha_max) <= 1
    assert float(below) <= 0, "lower line above the ReLU"
    assert float(above) <= 0, "upper line below the ReLU"


@pytest.mark.parametrize("rule", FIXED_RULES)
def test_stable_neurons_are_exact(rule):
    lower = jnp.array([0.0, 0.5, -3.0, -1.0, 2.0])
    upper = jnp.array([1.0, 0.5, -1.0, 0.0, 2.0])
    alpha, s, t = relu_lines(lower, upper, rule)
    np.testing.assert_array_equal(alpha, [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(s, [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(t, [0, 0, 0, 0, 0])


def test_rule_formulas_on_crossing_neurons():
    lower = jnp.array([-1.0, -3.0, -1.0, -0.05, -10.0])
    upper = jnp.array([3.0, 1.0, 1.0, 2.0, 0.2])
    lam = upper / (upper - lower)
    np.testing.assert_allclose(chord_slope(lower, upper), lam, rtol=1e-6)
    _, s, t = relu_lines(lower, upper)
    np.testing.assert_allclose(s, lam, rtol=1e-6)
    np.testing.assert_allclose(t, -lam * lower, rtol=1e-6)
    np.testing.assert_array_equal(lower_slope(lower, upper, "adaptive"), (upper >= -lower) * 1.0)
    np.testing.assert_array_equal(lower_slope(lower, upper, "zero"), 0 * lam)
    np.testing.assert_array_equal(lower_slope(lower, upper, "one"), 0 * lam + 1)
    np.testing.assert_allclose(lower_slope(lower, upper, "parallel"), lam, rtol=1e-6)
    gamma = 0.7
    soft = jax.nn.sigmoid(gamma * (lower / upper - upper / lower))
    np.testing.assert_allclose(lower_slope(lower, upper, "soft", gamma=gamma), soft, rtol=1e-5)
    # the "-c" ramps: the fixed slope away from the stable side, the exact stable slope at it
    tau = 0.1
    zc = lower_slope(lower, upper, "zero-c", tau=tau)
    oc = lower_slope(lower, upper, "one-c", tau=tau)
    np.testing.assert_allclose(zc, np.where(lam <= 1 - tau, 0.0, (lam - 1 + tau) / tau), atol=1e-6)
    np.testing.assert_allclose(oc, np.where(lam >= tau, 1.0, lam / tau), atol=1e-6)


def _line_jump(rule, before, after, **options):
    """Largest change of (α, s, t) between two (l, u) points."""
    a = jnp.stack(relu_lines(*before, rule, **options))
    b = jnp.stack(relu_lines(*after, rule, **options))
    return float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize(
    ("rule", "switch", "jumps"),
    [
        ("adaptive", "u=-l", True),
        ("parallel", "u=-l", False),
        ("soft", "u=-l", False),
        ("zero", "l=0", True),
        ("zero-c", "l=0", False),
        ("parallel", "l=0", False),
        ("adaptive", "l=0", False),
        ("one", "u=0", True),
        ("one-c", "u=0", False),
        ("parallel", "u=0", False),
        ("adaptive", "u=0", False),
    ],
)
def test_relaxation_jumps_only_where_the_rule_is_discontinuous(rule, switch, jumps):
    for delta in (1e-2, 1e-4):
        if switch == "u=-l":
            before, after = (jnp.array([-1.0]), jnp.array([1.0 - delta])), (jnp.array([-1.0]), jnp.array([1.0 + delta]))
        elif switch == "l=0":
            before, after = (jnp.array([-delta]), jnp.array([1.0])), (jnp.array([delta]), jnp.array([1.0]))
        else:
            before, after = (jnp.array([-1.0]), jnp.array([-delta])), (jnp.array([-1.0]), jnp.array([delta]))
        jump = _line_jump(rule, before, after, gamma=1.0, tau=0.1)
        if jumps:
            assert jump > 0.9, f"{rule} should jump at {switch}"
        else:
            assert jump < 100 * delta, f"{rule} should be continuous at {switch} (jump {jump} at delta {delta})"


@pytest.mark.parametrize("rule", FIXED_RULES)
def test_zero_width_and_tiny_intervals_give_finite_values_and_gradients(rule):
    def total(lower, upper):
        return sum(jnp.sum(v) for v in relu_lines(lower, upper, rule, gamma=2.0, tau=0.1))

    value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
    lower = jnp.array([-1.0, 0.0, 1.0, -1e-12, -1e-9])
    upper = jnp.array([-1.0, 0.0, 1.0, 1e-12, 1e-7])
    value, grads = value_and_grad(lower, upper)
    assert np.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_given_slopes_are_validated():
    lower, upper = jnp.array([[-1.0, 0.5, -2.0]]), jnp.array([[1.0, 1.0, 3.0]])
    alpha = lower_slope(lower, upper, "given", slopes=jnp.array([0.3, 0.4, 0.9]))  # shared by the batch
    np.testing.assert_allclose(alpha, [[0.3, 1.0, 0.9]], rtol=1e-6)  # stable neuron keeps its exact slope
    np.testing.assert_allclose(lower_slope(lower, upper, "given", slopes=0.25), [[0.25, 1.0, 0.25]])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        lower_slope(lower, upper, "given", slopes=jnp.array([0.3, 1.5, 0.0]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        lower_slope(lower, upper, "given", slopes=jnp.array([-0.1, 0.5, 0.0]))
    with pytest.raises(ValueError, match="expected shape"):
        lower_slope(lower, upper, "given", slopes=jnp.ones((2, 3)) * 0.5)
    with pytest.raises(ValueError, match="needs lower_slopes"):
        lower_slope(lower, upper, "given")
    # traced slopes cannot be checked: they are projected onto [0, 1]
    traced = jax.jit(lambda s: lower_slope(lower, upper, "given", slopes=s))(jnp.array([2.0, 0.5, -1.0]))
    np.testing.assert_allclose(traced, [[1.0, 1.0, 0.0]])


def test_bad_rule_and_options_give_clear_errors():
    lower, upper = jnp.array([-1.0]), jnp.array([1.0])
    with pytest.raises(ValueError, match="unknown lower-slope rule 'nope'"):
        relu_lines(lower, upper, "nope")
    from jaxcert.bounds.relu_slopes import check_rule_options

    with pytest.raises(ValueError, match="tau"):
        check_rule_options(0.0, 1.0)
    with pytest.raises(ValueError, match="gamma"):
        check_rule_options(0.1, -1.0)


def test_per_row_slopes_replace_only_crossing_neurons():
    lower, upper = jnp.array([[-1.0, 0.5, -2.0]]), jnp.array([[1.0, 1.0, -1.0]])
    lines = relu_lines(lower, upper)
    per_row = jnp.array([[[0.2, 0.2, 0.2], [0.7, 0.7, 0.7]]])  # (B=1, R=2, 3)
    new = with_lower_slope(lines, per_row, lower, upper)
    np.testing.assert_allclose(new.lower_slope, [[[0.2, 1.0, 0.0], [0.7, 1.0, 0.0]]])
