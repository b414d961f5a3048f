"""CROWN-IBP's margin pass in the layouts XLA:CPU runs fast (issue 19, fourth session): the kernel gradient of
transposed convolutions by taps, per-example sums as matrix-vector products, the margin spec folded rows
first. Values and gradients equal a plain dense reference (no conv transpose, no row sums, no fold), so a
bound that got looser, or a gradient that changed, fails; the bounds hold on sampled inputs and vertices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import certified_cross_entropy, get_relaxation, input_box, margin_lower_bounds, margin_spec
from jaxcert.bounds.conv_kernel_taps import MIN_CHANNELS, kernel_gradient_by_taps, taps_pay_on_cpu
from jaxcert.bounds.conv_transpose import conv_transpose
from jaxcert.bounds.relu_slopes import relu_lines
from jaxcert.bounds.row_sums import rows_dot_each, sum_rows, sum_window
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets import Conv, Dense, Flatten, Normalize, ReLU, forward, init_params
from jaxcert.nets.convolution import xla_conv2d
from tests.soundness import sample_box

#: CNN3's shape of net, small: the second convolution has 8 input channels (the taps' path on CPU) and
#: a stride-2, 4×4 kernel (the phases' path of the transpose).
ARCH = (Normalize((0.3,), (0.4,)), Conv(8, 4, 2, 1), ReLU(), Conv(12, 4, 2, 1), ReLU(), Flatten(), Dense(10))
IN_SHAPE = (8, 8, 1)


def case(seed: int, batch: int = 3, eps: float = 0.1):
    params = init_params(ARCH, IN_SHAPE, seed=seed)
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (batch, *IN_SHAPE))
    return params, x, jax.random.randint(ky, (batch,), 0, 10), eps


def dense_crown_ibp_margins(params, x, y, eps):
    """CROWN-IBP margin lower bounds with every linear layer as its dense Jacobian matrix, every sum a plain
    ``jnp.sum`` and the spec applied after the last layer's matrix: the textbook formulas, written apart."""
    lo, hi = input_box(x, eps)
    batch = x.shape[0]
    shapes, mats, offsets = [IN_SHAPE], [], []
    for spec, p in zip(ARCH, params, strict=True):
        shape = shapes[-1]
        shapes.append(spec.out_shape(shape))
        if spec.is_affine:
            n = int(np.prod(shape))
            jac = jax.jacobian(lambda v, spec=spec, p=p, shape=shape: spec.linear(p, v.reshape(1, *shape)).reshape(-1))
            mats.append(jac(jnp.zeros(n)))  # (out, in)
            offsets.append(jnp.broadcast_to(spec.offset(p), shapes[-1]).reshape(-1))
        else:
            mats.append(None)
            offsets.append(None)
    flat = lambda t: t.reshape(batch, -1)
    bounds, low, high = [], flat(lo), flat(hi)
    for m, o in zip(mats, offsets, strict=True):  # IBP, centre-radius form
        if m is None:
            bounds.append((low, high))
            low, high = jax.nn.relu(low), jax.nn.relu(high)
        else:
            c, r = (high + low) / 2 @ m.T + o, (high - low) / 2 @ jnp.abs(m).T
            low, high = c - r, c + r
    C = margin_spec(y, 10)
    A = jnp.einsum("bkn,nh->bkh", C, mats[-1])  # rows on the last hidden layer
    const = jnp.einsum("bkn,n->bk", C, offsets[-1])
    relus = iter(reversed(bounds))
    for m, o in zip(reversed(mats[:-1]), reversed(offsets[:-1]), strict=True):
        if m is None:
            lines = relu_lines(*next(relus))
            neg = A < 0
            const = const + jnp.sum(jnp.where(neg, A * lines.upper_intercept[:, None], 0.0), axis=-1)
            A = A * jnp.where(neg, lines.upper_slope[:, None], lines.lower_slope[:, None])
        else:
            const = const + jnp.sum(A * o, axis=-1)
            A = A @ m
    c, r = flat((hi + lo) / 2), flat((hi - lo) / 2)
    return const + jnp.sum(A * c[:, None] - jnp.abs(A) * r[:, None], axis=-1)


def loss_of(bound_fn):
    return lambda params, x, y, eps: jnp.mean(certified_cross_entropy(bound_fn(params, x, y, eps)))


def ours(params, x, y, eps):
    return margin_lower_bounds(ARCH, params, x, y, eps, relaxation="crown-ibp")


@pytest.mark.parametrize("seed", [0, 1])
def test_margins_and_their_gradient_equal_the_dense_reference(seed):
    params, x, y, eps = case(seed)
    np.testing.assert_allclose(jax.jit(ours)(params, x, y, eps), dense_crown_ibp_margins(params, x, y, eps),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    got = jax.jit(jax.grad(loss_of(ours)))(params, x, y, eps)
    want = jax.grad(loss_of(dense_crown_ibp_margins))(params, x, y, eps)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_margins_hold_on_sampled_inputs_and_box_vertices():
    params, x, y, eps = case(2, batch=4, eps=0.2)
    lb = jax.jit(ours)(params, x, y, eps)
    lo, hi = input_box(x, eps)
    C = margin_spec(y, 10)
    for b in range(x.shape[0]):
        points = sample_box(jax.random.key(b), lo[b], hi[b], 512)
        margins = forward(ARCH, params, points) @ C[b].T
        assert bool(jnp.all(margins >= lb[b] - 1e-5)), float(jnp.min(margins - lb[b]))


@pytest.mark.parametrize("bound_upper", [False, True])
def test_both_sides_equal_the_rows_of_the_negated_spec(bound_upper):
    params, x, y, eps = case(3)
    lo, hi = input_box(x, eps)
    C = margin_spec(y, 10)
    fn = jax.jit(lambda p, lo, hi, C: get_relaxation("crown-ibp")(ARCH, p, lo, hi, C, bound_upper=bound_upper))
    lb, ub = fn(params, lo, hi, C)
    neg_lb, _ = fn(params, lo, hi, -C)
    np.testing.assert_allclose(lb, dense_crown_ibp_margins(params, x, y, eps), rtol=1e-5, atol=1e-5)
    if bound_upper:  # the upper rows are the lower rows of -C
        np.testing.assert_allclose(ub, -neg_lb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("in_shape", "conv"),
    [((14, 14, 16), Conv(32, 4, 2, 1)), ((8, 8, 8), Conv(6, 3, 1, 1)), ((9, 9, 10), Conv(4, 3, 2, 0))],
)
def test_kernel_gradient_by_taps_equals_xlas(in_shape, conv):
    kx, ka, kw = jax.random.split(jax.random.key(0), 3)
    kernel_shape = (conv.kernel, conv.kernel, in_shape[2], conv.features)
    x = jax.random.normal(kx, (5, *in_shape))
    a = jax.random.normal(ka, (5, *conv.out_shape(in_shape)))
    w = jax.random.normal(kw, kernel_shape)
    _, vjp = jax.vjp(lambda w_: xla_conv2d(x, w_, conv.stride, conv.padding), w)
    np.testing.assert_allclose(
        kernel_gradient_by_taps(x, a, kernel_shape, conv.stride, conv.padding), vjp(a)[0], rtol=1e-4, atol=1e-4
    )


def test_conv_transpose_kernel_gradient_takes_the_taps_on_cpu_from_eight_channels():
    assert taps_pay_on_cpu(MIN_CHANNELS) and not taps_pay_on_cpu(MIN_CHANNELS - 1)
    conv, in_shape = Conv(6, 4, 2, 1), (8, 8, MIN_CHANNELS)
    kk, kr, kg = jax.random.split(jax.random.key(1), 3)
    w = jax.random.normal(kk, (4, 4, MIN_CHANNELS, 6))
    rows = jax.random.normal(kr, (5, *conv.out_shape(in_shape)))
    weights = jax.random.normal(kg, (5, *in_shape))
    primal = jax.ShapeDtypeStruct(weights.shape, weights.dtype)
    plain = lambda k_, a_: jax.linear_transpose(lambda v: xla_conv2d(v, k_, 2, 1), primal)(a_)[0]
    loss = lambda transpose: lambda k_, a_: jnp.sum(weights * jnp.sin(transpose(k_, a_)))
    got = jax.jit(jax.grad(loss(lambda k_, a_: conv_transpose(conv, k_, a_, in_shape)), (0, 1)))(w, rows)
    for g, want in zip(got, jax.grad(loss(plain), (0, 1))(w, rows), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4)
    if jax.default_backend() == "cpu":  # the kernel gradient is dot products, not a convolution over the rows
        grad_w = jax.jit(jax.grad(loss(lambda k_, a_: conv_transpose(conv, k_, a_, in_shape)))).lower(w, rows)
        hlo = grad_w.compile().as_text()
        assert "f32[4,4,8,6]" in hlo and hlo.count(" dot(") + hlo.count("dot_general") >= 16


def test_row_sums_equal_products_and_sums():
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    A = jax.random.normal(k1, (3, 4, 5, 6, 2))
    each = jax.random.normal(k2, (3, 5, 6, 2))
    per_row = jax.random.normal(k3, (3, 4, 5, 6, 2))
    full = lambda t: jnp.sum(t, axis=(2, 3, 4))
    np.testing.assert_allclose(sum_rows(A), full(A), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sum_window(A), jnp.sum(A, axis=(-3, -2, -1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows_dot_each(A, each), full(A * each[:, None]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows_dot_each(A, per_row), full(A * per_row), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows_dot_each(A[:1], each), full(A[:1] * each[:, None]), rtol=1e-5, atol=1e-5)


def test_fold_spec_equals_the_spec_times_the_last_layer():
    params, x, y, _ = case(4)
    C = margin_spec(y, 10)
    _, _, W, b = fold_spec(ARCH, params, C, x.shape[0])
    kernel, bias = params[-1]["kernel"], params[-1]["bias"]
    np.testing.assert_allclose(W, jnp.einsum("hn,bkn->bhk", kernel, C), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b, jnp.einsum("n,bkn->bk", bias, C), rtol=1e-6, atol=1e-6)
