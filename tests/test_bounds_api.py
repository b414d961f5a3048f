import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import (
    certified_cross_entropy,
    cross_entropy,
    input_box,
    is_certified,
    make_bound_fn,
    margin_lower_bounds,
    margin_spec,
    output_bounds,
    relaxation_names,
)
from tests.soundness import tiny_params


def test_margin_spec_rows_are_e_y_minus_e_j():
    C = margin_spec(jnp.array([0, 2]), 3)
    assert C.shape == (2, 2, 3)
    np.testing.assert_array_equal(C[0], [[1, -1, 0], [1, 0, -1]])
    np.testing.assert_array_equal(C[1], [[-1, 0, 1], [0, -1, 1]])


def test_input_box_clips_to_the_data_range_and_takes_per_example_eps():
    x = jnp.array([[0.05, 0.5, 0.98]])
    lo, hi = input_box(x, 0.1)
    np.testing.assert_allclose(lo, [[0.0, 0.4, 0.88]], atol=1e-6)
    np.testing.assert_allclose(hi, [[0.15, 0.6, 1.0]], atol=1e-6)
    lo2, hi2 = input_box(jnp.stack([x[0], x[0]]), jnp.array([0.0, 0.1]))
    np.testing.assert_allclose(lo2[0], x[0]) and np.testing.assert_allclose(hi2[1], hi[0], atol=1e-6)


@pytest.mark.slow
def test_certified_loss_upper_bounds_the_cross_entropy_at_the_clean_point():
    arch, in_shape, params = tiny_params("mlp", 0)
    x = jax.random.uniform(jax.random.key(0), (8, *in_shape))
    y = jnp.arange(8) % 3
    from jaxcert.nets import forward

    ce = cross_entropy(forward(arch, params, x), y)
    for name in relaxation_names():
        lb = margin_lower_bounds(arch, params, x, y, 0.05, relaxation=name)
        assert bool(jnp.all(certified_cross_entropy(lb) >= ce - 1e-4)), name
    # at eps = 0 the IBP certified loss equals the clean cross-entropy
    lb0 = margin_lower_bounds(arch, params, x, y, 0.0, relaxation="ibp")
    assert jnp.allclose(certified_cross_entropy(lb0), ce, atol=1e-4)
    assert jnp.array_equal(is_certified(lb0), jnp.argmax(forward(arch, params, x), -1) == y)


@pytest.mark.slow
@pytest.mark.parametrize("name", relaxation_names())
def test_every_relaxation_vmaps_over_parameter_samples_like_a_loop(name):
    arch, in_shape, params = tiny_params("conv", 2)
    samples = [jax.tree_util.tree_map(lambda a, s=s: a * (1 + 0.1 * s), params) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *samples)
    x = jax.random.uniform(jax.random.key(0), (2, *in_shape))
    C = margin_spec(jnp.array([0, 1]), 3)
    fn = make_bound_fn(arch, name)
    lb, ub = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(stacked, x, 0.05, C)
    for s, p in enumerate(samples):
        lb_s, ub_s = fn(p, x, 0.05, C)
        np.testing.assert_allclose(lb[s], lb_s, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ub[s], ub_s, rtol=1e-4, atol=1e-4)


def test_bad_inputs_give_clear_errors():
    arch, in_shape, params = tiny_params("conv", 0)
    x = jnp.zeros((2, *in_shape))
    y = jnp.array([0, 1])
    with pytest.raises(ValueError, match="eps must be >= 0"):
        margin_lower_bounds(arch, params, x, y, -0.1)
    with pytest.raises(ValueError, match="eps must be finite"):
        margin_lower_bounds(arch, params, x, y, float("nan"))
    with pytest.raises(ValueError, match="unknown relaxation 'nope'"):
        margin_lower_bounds(arch, params, x, y, 0.1, relaxation="nope")
    with pytest.raises(ValueError, match="expects HWC input with 2 channels"):
        output_bounds(arch, params, jnp.zeros((2, 4, 4, 3)), 0.1)
    with pytest.raises(ValueError, match="labels shape"):
        margin_lower_bounds(arch, params, x, jnp.array([0, 1, 2]), 0.1)
    with pytest.raises(ValueError, match="C must have shape"):
        output_bounds(arch, params, x, 0.1, C=jnp.zeros((2, 2, 5)))
