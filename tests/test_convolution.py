"""The convolution with a hand-written derivative: XLA's values, gradients equal to XLA's on both paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.nets.conv_backends import kernel_term_choice
from jaxcert.nets.convolution import conv2d, shifted_slices_conv2d, transposed_conv2d, xla_conv2d

#: (x shape, kernel shape, stride, padding): two in the im2col-scan-cf regime on CPU (thin layers, patch width 18
#: and 16, large images), two with XLA's kernel gradient.
SHAPES = [
    ((128, 16, 16, 2), (3, 3, 2, 3), 1, 1),
    ((128, 33, 33, 1), (4, 4, 1, 2), 1, 1),
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


def _kernel_layouts(compiled: str) -> list[str]:
    """The dimension labels of every convolution of a compiled XLA:CPU program."""
    return [line.split("dim_labels=")[1].split(",")[0] for line in compiled.splitlines() if " convolution(" in line]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layouts")
@pytest.mark.parametrize(
    ("x_shape", "k_shape", "stride", "padding", "convolutions"),
    [
        ((8, 28, 28, 1), (5, 5, 1, 16), 2, 2, 3),  # CNN3's first layer: XLA's kernel gradient (a convolution)
        ((8, 14, 14, 16), (4, 4, 16, 32), 2, 1, 2),  # its second: the kernel gradient is im2col-scan-gt's product
        ((8, 6, 5, 2), (3, 3, 2, 2), 1, 1, 3),  # (a non-square kernel, e.g. 2×3, gets XLA's swapped form)
    ],
)
def test_gradients_inside_a_loop_have_xla_cpus_canonical_layouts(x_shape, k_shape, stride, padding, convolutions):
    """In a ``while`` loop (PGD's steps, ``lax.map`` over GLS members) XLA:CPU leaves XLA's own input and
    kernel gradients in non-canonical layouts (``01oi`` kernels, ``f01b_i01o->01bf``) and runs them on its
    generic path (2-9× the CPU time); conv2d's gradients keep the canonical ``b01f_01io->b01f`` there, with
    XLA's values."""
    x, kernel, _ = operands(x_shape, k_shape)

    def ascent(conv):
        step = jax.grad(lambda v, k: jnp.sum(jnp.tanh(conv(v, k, stride, padding))), (0, 1))
        body = lambda i, vk: jax.tree.map(lambda a, d: a + 0.1 * d, vk, step(*vk))
        return jax.jit(lambda x0, k0: jax.lax.fori_loop(0, 3, body, (x0, k0)))

    ours, xla = ascent(conv2d), ascent(xla_conv2d)
    for got, want in zip(ours(x, kernel), xla(x, kernel), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    canonical = "b01f_01io->b01f"
    layouts = _kernel_layouts(ours.lower(x, kernel).compile().as_text())
    assert set(layouts) == {canonical} and len(layouts) >= convolutions
    assert set(_kernel_layouts(xla.lower(x, kernel).compile().as_text())) != {canonical}  # XLA's own: not


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layouts")
def test_the_transposed_convolution_of_back_substitution_inside_a_loop_has_the_canonical_kernel_layout():
    """Back-substitution's ``convᵀ`` (alpha-CROWN's slope ascent runs it in a loop) equals
    :func:`jax.linear_transpose` of XLA's convolution and keeps the canonical kernel layout there."""
    _, kernel, kg = operands((1,), (5, 5, 1, 16))
    rows = jax.random.normal(kg, (12, 14, 14, 16))
    primal = jax.ShapeDtypeStruct((12, 28, 28, 1), jnp.float32)
    xla_transpose = lambda a: jax.linear_transpose(lambda x_: xla_conv2d(x_, kernel, 2, 2), primal)(a)[0]

    def summed(transpose):
        body = lambda i, acc: acc + transpose(rows * (1.0 + i))
        return jax.jit(lambda: jax.lax.fori_loop(0, 3, body, jnp.zeros(primal.shape)))

    ours, xla = summed(lambda a: transposed_conv2d(a, kernel, (28, 28, 1), 2, 2)), summed(xla_transpose)
    np.testing.assert_allclose(ours(), xla(), rtol=1e-5, atol=1e-5)
    assert _kernel_layouts(ours.lower().compile().as_text()) == ["b01f_01io->b01f"]
    assert _kernel_layouts(xla.lower().compile().as_text()) != ["b01f_01io->b01f"]


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
