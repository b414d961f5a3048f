"""The exact (MILP) and triangle-LP references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import margin_spec
from jaxcert.bounds.exact import dense_blocks, exact_bounds, lp_bounds
from jaxcert.nets import Dense, ReLU, forward, init_params
from tests.soundness import NET_NAMES
from tests.test_crown import box_samples, example_box, family_bounds, jit_forward

#: A net with a one-dimensional input, whose exact range a fine grid reproduces.
LINE_NET = (Dense(8), ReLU(), Dense(6), ReLU(), Dense(3))


@pytest.mark.parametrize("net", NET_NAMES)
def test_dense_blocks_reproduce_the_network(net):
    arch, params, lo, _, _ = example_box(net, 0, 0.0)
    h = np.asarray(lo, np.float64).reshape(lo.shape[0], -1)
    blocks = dense_blocks(arch, params, lo.shape[1:])
    for k, (W, b) in enumerate(blocks):
        h = h @ W.T + b
        h = np.maximum(h, 0) if k < len(blocks) - 1 else h
    np.testing.assert_allclose(h, jit_forward(net)(params, lo), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_exact_bounds_match_a_fine_grid_on_a_one_dimensional_input():
    params = init_params(LINE_NET, (1,), seed=3)
    lo, hi = jnp.array([[-1.0], [0.2]]), jnp.array([[1.0], [0.9]])
    C = margin_spec(jnp.array([0, 2]), 3)
    lb, ub = exact_bounds(LINE_NET, params, lo, hi, C)
    forward_line = jax.jit(lambda p, x: forward(LINE_NET, p, x))
    for b in range(2):
        grid = np.linspace(lo[b, 0], hi[b, 0], 20_001, dtype=np.float32)[:, None]
        out = np.asarray(forward_line(params, grid)) @ np.asarray(C[b]).T
        np.testing.assert_allclose(lb[b], out.min(0), atol=1e-4)
        np.testing.assert_allclose(ub[b], out.max(0), atol=1e-4)


@pytest.mark.parametrize(("net", "eps"), [("mlp", 0.1), ("bn", 0.1), ("conv", 0.02)])
def test_exact_bounds_contain_samples_and_lie_inside_the_lp(net, eps):
    arch, params, lo, hi, C = example_box(net, 4, eps)
    lb, ub = exact_bounds(arch, params, lo, hi, C)
    lp_lb, lp_ub = lp_bounds(arch, params, lo, hi, C)
    pts = box_samples(0, lo, hi, 512)
    out = np.asarray(jit_forward(net)(params, pts.reshape(-1, *lo.shape[1:]))).reshape(lo.shape[0], 1024, -1)
    out = np.einsum("bsn,bkn->bsk", out, np.asarray(C))
    assert np.all(lb <= out.min(1) + 1e-5) and np.all(ub >= out.max(1) - 1e-5)
    assert np.all(lp_lb <= lb + 1e-6) and np.all(lp_ub >= ub - 1e-6)
    assert np.any(lp_lb < lb - 1e-4) or np.any(lp_ub > ub + 1e-4), "pick an example with unstable neurons"


@pytest.mark.slow
def test_exact_bounds_do_not_depend_on_the_valid_big_m_bounds_and_equal_the_lp_when_all_stable():
    arch, params, lo, hi, C, bounds = family_bounds("mlp", 5, 0.08)
    tighter = bounds["crown"][-1]  # CROWN pre-activation bounds: valid, tighter than interval ones
    np.testing.assert_allclose(
        exact_bounds(arch, params, lo, hi, C, intermediate=tighter), exact_bounds(arch, params, lo, hi, C), atol=1e-5
    )
    arch, params, lo, hi, C = example_box("mlp", 5, 0.001)
    np.testing.assert_allclose(lp_bounds(arch, params, lo, hi, C), exact_bounds(arch, params, lo, hi, C), atol=1e-7)


def test_bad_inputs_give_clear_errors():
    arch, params, lo, hi, C = example_box("mlp", 0, 0.1)
    with pytest.raises(ValueError, match="too large for the exact reference"):
        exact_bounds(arch, params, lo, hi, C, max_neurons=5)
    with pytest.raises(ValueError, match="one \\(lower, upper\\) pair per ReLU layer"):
        lp_bounds(arch, params, lo, hi, C, intermediate=[(jnp.zeros((3, 6)), jnp.ones((3, 6)))])
    with pytest.raises(ValueError, match="neurons per example"):
        lp_bounds(arch, params, lo, hi, C, intermediate=[(jnp.zeros((3, 5)), jnp.ones((3, 5)))] * 2)
    with pytest.raises(ValueError, match="lower bounds exceed the upper bounds"):
        lp_bounds(arch, params, lo, hi, C, intermediate=[(jnp.ones((3, 6)), jnp.zeros((3, 6))), (-1, 1)])
    with pytest.raises(ValueError, match="C must have shape"):
        exact_bounds(arch, params, lo, hi, jnp.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match="same shape"):
        exact_bounds(arch, params, lo, hi[:2], C)
