import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds import (
    certified_cross_entropy,
    get_relaxation,
    input_box,
    interval_layers,
    make_bound_fn,
    margin_spec,
)
from jaxcert.bounds import zonotope as zono
from jaxcert.bounds.deepz import relu_slope_offset
from jaxcert.nets import BatchNorm, Conv, Dense, Flatten, Normalize, ReLU, forward, init_params
from tests.soundness import NET_NAMES, assert_sound, tiny_params

# A net with two hidden neurons x and x + s, outputs relu(x) and relu(x) - (x + s): with x crossing and
# x + s stable active, every relaxation's bounds have a closed form.
SHIFT = 10.0
SINGLE_RELU_ARCH = (Flatten(), Dense(2), ReLU(), Dense(2))
SINGLE_RELU_PARAMS = [
    {},
    {"kernel": jnp.array([[1.0, 1.0]]), "bias": jnp.array([0.0, SHIFT])},
    {},
    {"kernel": jnp.array([[1.0, 1.0], [0.0, -1.0]]), "bias": jnp.zeros(2)},
]


@functools.cache
def jit_relaxation(name: str):
    """The relaxation ``name`` jitted with a static architecture (so repeated shapes hit the cache)."""
    return jax.jit(get_relaxation(name), static_argnums=0)


def single_relu_bounds(relaxation: str, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
    lb, ub = jit_relaxation(relaxation)(
        SINGLE_RELU_ARCH, SINGLE_RELU_PARAMS, jnp.array([[lower]]), jnp.array([[upper]])
    )
    return np.asarray(lb[0]), np.asarray(ub[0])


@functools.partial(jax.jit, static_argnums=0)
def exact_affine_range(arch, params, lower, upper, C=None):
    """Exact range of ``C f`` over the box when ``f`` is affine on it: ``f(c) ± |J| r`` at the box centre."""
    centre, radius = (upper + lower) / 2, (upper - lower) / 2

    def single(c, r, spec_rows):
        f = lambda v: forward(arch, params, v[None])[0] @ spec_rows.T
        J = jax.jacobian(f)(c).reshape(spec_rows.shape[0], -1)
        return f(c), jnp.abs(J) @ r.reshape(-1)

    n = arch[-1].features
    rows = C if C is not None else jnp.broadcast_to(jnp.eye(n), (lower.shape[0], n, n))
    value, rad = jax.vmap(single)(centre, radius, rows)
    return value - rad, value + rad


def num_crossing(arch, params, lower, upper) -> int:
    """Crossing ReLUs according to IBP (whose intervals contain the true pre-activation ranges)."""
    layers = interval_layers(arch, params, lower, upper)
    return sum(
        int(jnp.sum((lo < 0) & (hi > 0)))
        for spec, (lo, hi) in zip(arch, layers[:-1], strict=True)
        if isinstance(spec, ReLU)
    )


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3), use_spec=st.booleans(), scale=st.floats(0.3, 3.0))
def test_deepz_is_sound(net, seed, eps, use_spec, scale):
    """Sampled points and box vertices stay inside the bounds (weights scaled to vary how many cross)."""
    assert_sound("deepz", net, seed, eps, use_spec=use_spec, weight_scale=scale)


@pytest.mark.slow
@pytest.mark.parametrize("relaxation", ["deepz", "hbox"])
@pytest.mark.parametrize("net", NET_NAMES)
def test_exact_when_no_neuron_crosses(relaxation, net):
    arch, in_shape, params = tiny_params(net, 5)
    x = jax.random.uniform(jax.random.key(1), (3, *in_shape))
    C = margin_spec(jnp.array([0, 2, 1]), 3)
    lower, upper = input_box(x, 2e-4)
    assert num_crossing(arch, params, lower, upper) == 0, "precondition: choose a smaller eps"
    lb, ub = jit_relaxation(relaxation)(arch, params, lower, upper, C)
    lb_exact, ub_exact = exact_affine_range(arch, params, lower, upper, C)
    assert jnp.allclose(lb, lb_exact, atol=1e-5) and jnp.allclose(ub, ub_exact, atol=1e-5)
    # exact, hence never looser than IBP
    lb_ibp, ub_ibp = jit_relaxation("ibp")(arch, params, lower, upper, C)
    assert bool(jnp.all(lb >= lb_ibp - 1e-5)) and bool(jnp.all(ub <= ub_ibp + 1e-5))
    assert bool(jnp.all(ub_ibp - lb_ibp > ub - lb))


@pytest.mark.slow
def test_deepz_is_exact_on_an_affine_net():
    arch = (Normalize((0.2, 0.5), (0.3, 0.6)), Conv(3, 3, 2, 1), BatchNorm(), Flatten(), Dense(4), Dense(3))
    in_shape = (4, 4, 2)
    params = init_params(arch, in_shape, seed=2)
    params[2] = {
        "scale": jnp.array([1.5, -0.7, 0.3]),
        "bias": jnp.array([0.1, 0.0, -0.2]),
        "mean": jnp.array([0.2, -0.1, 0.0]),
        "var": jnp.array([0.5, 1.0, 2.0]),
    }
    x = jax.random.uniform(jax.random.key(3), (2, *in_shape))
    lower, upper = input_box(x, 0.3)
    lb, ub = jit_relaxation("deepz")(arch, params, lower, upper)
    lb_exact, ub_exact = exact_affine_range(arch, params, lower, upper)
    assert jnp.allclose(lb, lb_exact, atol=1e-5) and jnp.allclose(ub, ub_exact, atol=1e-5)
    lb_ibp, ub_ibp = jit_relaxation("ibp")(arch, params, lower, upper)
    assert bool(jnp.all(ub_ibp - lb_ibp > ub - lb + 1e-3)), "IBP should be loose on this net"


@pytest.mark.parametrize(("lower", "upper"), [(-1.0, 3.0), (-2.0, 0.5), (-0.3, 0.3)])
def test_deepz_crossing_relu_closed_form(lower, upper):
    lam = upper / (upper - lower)
    mu = -lam * lower / 2
    c, r = (upper + lower) / 2, (upper - lower) / 2
    lb, ub = single_relu_bounds("deepz", lower, upper)
    # relu(x) ∈ [λl, u]: the parallelogram's bounds, looser than IBP's [0, u] below
    np.testing.assert_allclose(lb[0], lam * lower, rtol=1e-6)
    np.testing.assert_allclose(ub[0], upper, rtol=1e-6)
    # relu(x) - (x + s) = (λ - 1) x + μ - s + μ ε_new keeps the correlation with x
    centre, radius = (lam - 1) * c + mu - SHIFT, (1 - lam) * r + mu
    np.testing.assert_allclose(lb[1], centre - radius, rtol=1e-6)
    np.testing.assert_allclose(ub[1], centre + radius, rtol=1e-6)
    lb_ibp, _ = single_relu_bounds("ibp", lower, upper)
    assert lb[0] < lb_ibp[0] == 0.0, "DeepZ is not always tighter than IBP"
    assert lb[1] > lb_ibp[1] + 1e-3


def test_relu_slope_offset_on_stable_neurons_and_gradients():
    lower = jnp.array([-2.0, 0.0, 1.0, -1.0, -1.0])
    upper = jnp.array([-1.0, 2.0, 3.0, 0.0, 1.0])
    slope, offset = relu_slope_offset(lower, upper)
    np.testing.assert_allclose(slope, [0.0, 1.0, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(offset, [0.0, 0.0, 0.0, 0.0, 0.25])
    grads = jax.grad(lambda lu: jnp.sum(relu_slope_offset(*lu)[0]))((lower, upper))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_deepz_is_continuous_where_hbox_jumps():
    """As l crosses 0 the DeepZ bounds move by O(δ); hBox switches from a box to the symbolic form."""
    delta, upper = 1e-4, 2.0
    dz_neg, dz_pos = single_relu_bounds("deepz", -delta, upper), single_relu_bounds("deepz", delta, upper)
    hb_neg, hb_pos = single_relu_bounds("hbox", -delta, upper), single_relu_bounds("hbox", delta, upper)
    for a, b in zip(dz_neg, dz_pos, strict=True):
        assert np.max(np.abs(a - b)) < 10 * delta
    assert np.max(np.abs(hb_neg[0] - hb_pos[0])) > 0.5 * upper


@pytest.mark.parametrize("relaxation", ["deepz", "hbox"])
def test_vmap_over_parameter_samples_equals_loop(relaxation):
    net = "conv"
    arch, in_shape, _ = tiny_params(net, 0)
    samples = [tiny_params(net, seed)[2] for seed in (1, 2, 3)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *samples)
    x = jax.random.uniform(jax.random.key(4), (2, *in_shape))
    C = margin_spec(jnp.array([1, 2]), 3)
    eps = jnp.array([0.02, 0.05, 0.1])
    fn = make_bound_fn(arch, relaxation)
    lb, ub = jax.jit(jax.vmap(fn, in_axes=(0, None, 0, None)))(stacked, x, eps, C)
    single = jax.jit(fn)
    for i, params in enumerate(samples):
        lb_i, ub_i = single(params, x, eps[i], C)
        assert jnp.allclose(lb[i], lb_i, atol=1e-5) and jnp.allclose(ub[i], ub_i, atol=1e-5)


@pytest.mark.parametrize("relaxation", ["deepz", "hbox"])
def test_bad_input_is_rejected(relaxation):
    arch, in_shape, params = tiny_params("mlp", 0)
    fn = get_relaxation(relaxation)
    lower = jnp.zeros((2, *in_shape))
    with pytest.raises(ValueError, match="same shape"):
        fn(arch, params, lower, jnp.ones((3, *in_shape)))
    with pytest.raises(ValueError, match="no options"):
        fn(arch, params, lower, lower + 0.1, slope=0.5)
    with pytest.raises(ValueError, match="C must have shape"):
        fn(arch, params, lower, lower + 0.1, jnp.zeros((2, 2, 4)))


def test_fold_spec_is_used_for_margins():
    """Margin bounds of the folded spec are never looser than differences of logit bounds."""
    arch, in_shape, params = tiny_params("bn", 8)
    x = jax.random.uniform(jax.random.key(6), (3, *in_shape))
    y = jnp.array([0, 1, 2])
    C = margin_spec(y, 3)
    lower, upper = input_box(x, 0.1)
    fn = jit_relaxation("deepz")
    lb, _ = fn(arch, params, lower, upper, C)
    lz, uz = fn(arch, params, lower, upper)
    lb_naive = jnp.take_along_axis(lz, y[:, None], 1) - jnp.einsum("bkn,bn->bk", (C < 0) * 1.0, uz)
    assert bool(jnp.all(lb >= lb_naive - 1e-5))


def test_lifting_the_box_equals_the_layer_applied_to_diagonal_generators():
    """``r ⊙ A(I)`` (one pass over unit vectors for the whole batch) equals ``A diag(r)`` per example."""
    spec, in_shape = Conv(3, 3, 2, 1), (4, 4, 2)
    params = init_params((spec,), in_shape, seed=1)[0]
    box = jax.random.uniform(jax.random.key(2), (2, *in_shape))
    n = box[0].size
    diag = (jnp.eye(n)[None] * box.reshape(2, 1, n)).reshape(2, n, *in_shape)
    expected = zono.map_rows(lambda g: spec.linear(params, g), diag)
    assert jnp.allclose(zono.lift_box(spec, params, box), expected, atol=1e-6)


@pytest.mark.parametrize("relaxation", ["deepz", "hbox"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_certified_loss_gradients_are_finite(relaxation, eps):
    arch, in_shape, params = tiny_params("conv", 2)
    x = jax.random.uniform(jax.random.key(7), (2, *in_shape))
    C = margin_spec(jnp.array([0, 1]), 3)
    fn = make_bound_fn(arch, relaxation)
    loss = lambda p: jnp.mean(certified_cross_entropy(fn(p, x, eps, C)[0]))
    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(bool(jnp.any(g != 0)) for g in leaves)
