import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds import input_box, margin_spec
from jaxcert.bounds.hbox import hbox_relu
from jaxcert.bounds.zonotope import HybridZonotope
from jaxcert.nets import Dense, Flatten, Normalize, ReLU, forward, init_params
from tests.soundness import NET_NAMES, assert_sound, sample_box, tiny_params
from tests.test_deepz import SHIFT, jit_relaxation, single_relu_bounds

# Exactness without crossing neurons, vmap over parameter samples and bad input are tested for both
# hBox and DeepZ in tests/test_deepz.py.


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3), use_spec=st.booleans(), scale=st.floats(0.3, 3.0))
def test_hbox_is_sound(net, seed, eps, use_spec, scale):
    """Sampled points and box vertices stay inside the bounds (weights scaled to vary how many cross)."""
    assert_sound("hbox", net, seed, eps, use_spec=use_spec, weight_scale=scale)


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_hbox_is_never_looser_than_ibp(net, seed, eps):
    """Theorem: each hBox interval hull lies inside the IBP interval of the same neuron (induction over
    layers: Σ_e|A G_e| ≤ |A| Σ_e|G_e|, and the ReLU rule maps [l, u] ⊆ [l', u'] into IBP's output)."""
    arch, in_shape, params = tiny_params(net, seed)
    x = jax.random.uniform(jax.random.key(seed), (3, *in_shape))
    C = margin_spec(jnp.array([0, 1, 2]), 3)
    lower, upper = input_box(x, eps)
    lb, ub = jit_relaxation("hbox")(arch, params, lower, upper, C)
    lb_ibp, ub_ibp = jit_relaxation("ibp")(arch, params, lower, upper, C)
    tol = 1e-5 * (1 + jnp.abs(lb_ibp) + jnp.abs(ub_ibp))
    assert bool(jnp.all(lb >= lb_ibp - tol)) and bool(jnp.all(ub <= ub_ibp + tol))


@pytest.mark.parametrize(("lower", "upper"), [(-1.0, 3.0), (-2.0, 0.5), (-0.3, 0.3)])
def test_hbox_crossing_relu_becomes_the_box_0_u(lower, upper):
    c, r = (upper + lower) / 2, (upper - lower) / 2
    lb, ub = single_relu_bounds("hbox", lower, upper)
    np.testing.assert_allclose([lb[0], ub[0]], [0.0, upper], atol=1e-6)
    # relu(x) - (x + s): the box [0, u] (centre u/2, radius u/2) minus the symbolic x + s = c + s + r ε
    np.testing.assert_allclose(lb[1], upper / 2 - c - SHIFT - (upper / 2 + r), rtol=1e-6)
    np.testing.assert_allclose(ub[1], upper / 2 - c - SHIFT + (upper / 2 + r), rtol=1e-6)


def test_hbox_stable_active_neurons_keep_the_symbolic_form():
    """With l ≥ 0, relu(x) - (x + s) = -s exactly (the error terms cancel); IBP gets -s ± (u - l)."""
    lower, upper = 0.5, 2.0
    lb, ub = single_relu_bounds("hbox", lower, upper)
    np.testing.assert_allclose([lb[1], ub[1]], [-SHIFT, -SHIFT], atol=1e-5)
    lb_ibp, ub_ibp = single_relu_bounds("ibp", lower, upper)
    np.testing.assert_allclose([lb_ibp[1], ub_ibp[1]], [-SHIFT - (upper - lower), -SHIFT + (upper - lower)], atol=1e-5)


@pytest.mark.slow
def test_hbox_relu_rule_per_neuron():
    # neurons: inactive, active, crossing (bounds from centre ± (Σ|G| + r))
    z = HybridZonotope(
        centre=jnp.array([[-3.0, 3.0, 0.5]]),
        generators=jnp.array([[[1.0, 1.0, 1.0], [0.5, -0.5, 0.5]]]),
        box=jnp.array([[0.5, 0.5, 0.5]]),
    )
    out = hbox_relu(z)
    u = 0.5 + 2.0
    np.testing.assert_allclose(out.centre, [[0.0, 3.0, u / 2]])
    np.testing.assert_allclose(out.generators, [[[0.0, 1.0, 0.0], [0.0, -0.5, 0.0]]])
    np.testing.assert_allclose(out.box, [[0.0, 0.5, u / 2]])


@pytest.mark.slow
def test_hbox_with_a_relu_before_any_mixing_layer():
    """The input box is lifted into input error terms before a leading ReLU (no Conv/Dense before it)."""
    arch = (Normalize((0.5,), (0.5,)), ReLU(), Flatten(), Dense(4), ReLU(), Dense(3))
    in_shape = (3, 2, 1)
    params = init_params(arch, in_shape, seed=3)
    x = jax.random.uniform(jax.random.key(8), (2, *in_shape))
    lower, upper = input_box(x, 0.2)
    lb, ub = jit_relaxation("hbox")(arch, params, lower, upper)
    lb_ibp, ub_ibp = jit_relaxation("ibp")(arch, params, lower, upper)
    assert bool(jnp.all(lb >= lb_ibp - 1e-5)) and bool(jnp.all(ub <= ub_ibp + 1e-5))
    for b in range(2):
        out = forward(arch, params, sample_box(jax.random.key(b), lower[b], upper[b], 256))
        assert bool(jnp.all(out >= lb[b] - 1e-5)) and bool(jnp.all(out <= ub[b] + 1e-5))
