"""The convolution with a hand-written derivative: XLA's values, gradients equal to XLA's on both paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.nets.conv_backends import kernel_term_choice
from jaxcert.nets.convolution import conv2d, shifted_slices_conv2d, xla_conv2d

#: (x shape, kernel shape, stride, padding): two in the im2col-scan-cf regime on CPU (thin layers, patch width 18
#: and 16, large images), two with XLA's kernel gradient.
SHAPES = [
    ((128, 16, 16, 2), (3, 3, 2, 3), 1, 1),
    ((128, 33, 33, 1), (4, 4, 1, 2), 2, 1),
    ((5, 7, 7, 3), (3, 3, 3, 4), 2, 0),
    ((3, 6, 5, 2), (2, 3, 2, 2), 1, 1),
]


def operands(x_shape, k_shape, seed=0):
    kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
    return jax.random.normal(kx, x_shape), 0.3 * jax.random.normal(kk, k_shape), kg


@pytest.mark.slow
@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), SHAPES)
def test_shifted_slices_equal_xla_convolution_in_values_and_transposes(x_shape, k_shape, stride, padding):
    x, kernel, kg = operands(x_shape, k_shape)
    expected = xla_conv2d(x, kernel, stride, padding)
    np.testing.assert_allclose(shifted_slices_conv2d(x, kernel, stride, padding), expected, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, expected.shape)
    (by_slices,) = jax.linear_transpose(lambda k: shifted_slices_conv2d(x, k, stride, padding), kernel)(g)
    (by_xla,) = jax.linear_transpose(lambda k: xla_conv2d(x, k, stride, padding), kernel)(g)
    np.testing.assert_allclose(by_slices, by_xla, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), SHAPES)
def test_conv2d_has_xla_values_gradients_and_forward_derivatives(x_shape, k_shape, stride, padding):
    x, kernel, kg = operands(x_shape, k_shape, seed=1)
    weights = jax.random.normal(kg, xla_conv2d(x, kernel, stride, padding).shape)
    ours = lambda x_, k_: jnp.sum(weights * jnp.tanh(conv2d(x_, k_, stride, padding)))
    xla = lambda x_, k_: jnp.sum(weights * jnp.tanh(xla_conv2d(x_, k_, stride, padding)))
    np.testing.assert_array_equal(conv2d(x, kernel, stride, padding), xla_conv2d(x, kernel, stride, padding))
    for got, want in zip(jax.jit(jax.grad(ours, (0, 1)))(x, kernel), jax.grad(xla, (0, 1))(x, kernel), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    tangents = (jnp.ones_like(x), jnp.ones_like(kernel))
    np.testing.assert_allclose(
        jax.jvp(ours, (x, kernel), tangents)[1], jax.jvp(xla, (x, kernel), tangents)[1], rtol=1e-4, atol=1e-3
    )


def test_conv2d_vmaps_over_member_kernels_and_transposes_in_its_input():
    x, kernel, _ = operands((128, 16, 16, 2), (3, 3, 2, 3))
    kernels = jnp.stack([kernel, 2 * kernel, -kernel])
    loss = lambda k_: jnp.sum(conv2d(x, k_, 1, 1) ** 2)
    per_member = jax.jit(jax.vmap(jax.grad(loss)))(kernels)
    xla_grad = jax.grad(lambda k_: jnp.sum(xla_conv2d(x, k_, 1, 1) ** 2))
    for i in range(3):
        np.testing.assert_allclose(per_member[i], xla_grad(kernels[i]), rtol=1e-4, atol=1e-3)
    rows = jnp.ones((2, 16, 16, 3))
    primal = jax.ShapeDtypeStruct((2, 16, 16, 2), jnp.float32)
    (ours,) = jax.linear_transpose(lambda a: conv2d(a, kernel, 1, 1), primal)(rows)
    (xla,) = jax.linear_transpose(lambda a: xla_conv2d(a, kernel, 1, 1), primal)(rows)
    np.testing.assert_allclose(ours, xla, rtol=1e-6)


@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), SHAPES)
def test_the_cpu_kernel_gradient_takes_im2col_chunks_exactly_when_they_pay(x_shape, k_shape, stride, padding):
    """On CPU the compiled kernel gradient has no convolution of its own in the im2col-scan-cf regime."""
    x, kernel, _ = operands(x_shape, k_shape)
    grad = jax.jit(jax.grad(lambda k_: jnp.sum(conv2d(x, k_, stride, padding) ** 2)))
    hlo = grad.lower(kernel).compile().as_text()
    convolutions = sum(" convolution(" in line for line in hlo.splitlines())
    choice = kernel_term_choice("cpu", x_shape, k_shape, stride, padding)
    assert choice == ("im2col-scan-cf" if x_shape[0] >= 128 else "xla")  # the two large cases of SHAPES
    if jax.default_backend() == "cpu":
        assert convolutions == (1 if choice == "im2col-scan-cf" else 2), hlo[:2000]
