"""The transpose of a strided convolution by phases: equal to jax.linear_transpose, in values, gradients
and the bounds built on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds import conv_phases, get_relaxation, input_box, margin_spec
from jaxcert.bounds.conv_phases import phase_transpose, phases_pay_on_cpu
from jaxcert.bounds.conv_transpose import conv_transpose
from jaxcert.nets import Conv, Dense, Flatten, Normalize, ReLU, forward, init_params
from jaxcert.nets.convolution import xla_conv2d


def by_linear_transpose(conv, kernel, rows, in_shape):
    primal = jax.ShapeDtypeStruct((rows.shape[0], *in_shape), rows.dtype)
    return jax.linear_transpose(lambda x: xla_conv2d(x, kernel, conv.stride, conv.padding), primal)(rows)[0]


@pytest.mark.slow
@given(
    stride=st.integers(2, 3),
    kernel=st.integers(1, 5),
    padding=st.integers(0, 2),
    blocks=st.tuples(st.integers(2, 5), st.integers(2, 5)),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    seed=st.integers(0, 1000),
)
def test_phases_equal_linear_transpose_for_every_geometry(stride, kernel, padding, blocks, channels, seed):
    conv = Conv(channels[1], kernel, stride, padding)
    in_shape = (blocks[0] * stride, blocks[1] * stride, channels[0])
    out_shape = conv.out_shape(in_shape)
    if min(out_shape[:2]) < 1:
        return
    kk, kr = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(kk, (kernel, kernel, channels[0], channels[1]))
    rows = jax.random.normal(kr, (2, *out_shape))
    np.testing.assert_allclose(
        phase_transpose(conv, w, rows, in_shape), by_linear_transpose(conv, w, rows, in_shape), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_conv_transpose_by_phases_keeps_the_values_and_gradients():
    conv, in_shape = Conv(6, 4, 2, 1), (8, 8, 8)
    assert phases_pay_on_cpu(conv, in_shape)
    kk, kr, kg = jax.random.split(jax.random.key(0), 3)
    w = jax.random.normal(kk, (4, 4, 8, 6))
    rows = jax.random.normal(kr, (5, *conv.out_shape(in_shape)))
    weights = jax.random.normal(kg, (5, *in_shape))
    ours = lambda k_, a_: jnp.sum(weights * jnp.sin(conv_transpose(conv, k_, a_, in_shape)))
    reference = lambda k_, a_: jnp.sum(weights * jnp.sin(by_linear_transpose(conv, k_, a_, in_shape)))
    np.testing.assert_allclose(jax.jit(ours)(w, rows), reference(w, rows), rtol=1e-5)
    for got, want in zip(jax.jit(jax.grad(ours, (0, 1)))(w, rows), jax.grad(reference, (0, 1))(w, rows), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if jax.default_backend() == "cpu":  # the CPU program has no convolution with a dilated input
        hlo = jax.jit(lambda a_: conv_transpose(conv, w, a_, in_shape)).lower(rows).compile().as_text()
        assert "lhs_dilate" not in hlo and " convolution(" in hlo


ARCH = (Normalize((0.4,), (0.3,)), Conv(8, 3, 1, 1), ReLU(), Conv(5, 4, 2, 1), ReLU(), Flatten(), Dense(3))


@pytest.mark.slow
@pytest.mark.parametrize("relaxation", ["crown-ibp", "crown", "alpha-crown"])
def test_bounds_through_a_layer_transposed_by_phases_equal_those_by_linear_transpose(relaxation, monkeypatch):
    assert phases_pay_on_cpu(ARCH[3], (8, 8, 8))
    params = init_params(ARCH, (8, 8, 1), seed=3)
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
    lower, upper = input_box(x, 0.05)
    C = margin_spec(jnp.array([0, 1, 2]), 3)
    bound = get_relaxation(relaxation)
    options = {"steps": 3} if relaxation == "alpha-crown" else {}
    phased = jax.jit(lambda p: bound(ARCH, p, lower, upper, C, **options))(params)
    monkeypatch.setattr(conv_phases, "MIN_CHANNELS", 10**9)  # every transpose by jax.linear_transpose
    plain = jax.jit(lambda p: bound(ARCH, p, lower, upper, C, **options))(params)
    for got, want in zip(phased, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    margins = forward(ARCH, params, x)[:, None, :] @ jnp.swapaxes(C, 1, 2)
    assert bool(jnp.all(phased[0] <= margins[:, 0] + 1e-5))
