"""The CPU convolution paths (im2col, per-backend kernel-gradient choice) equal XLA's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.nets import conv_backends
from jaxcert.nets.conv_backends import kernel_term_choice
from jaxcert.nets.conv_im2col import im2col_conv2d, patches
from jaxcert.nets.convolution import conv2d, xla_conv2d

#: CNN3's, CNN5's and CNN7's conv layers (Fashion-MNIST / CIFAR-10 inputs) at a small batch, and odd cases:
#: (x shape, kernel shape, stride, padding).
LAYERS = [
    ((3, 28, 28, 1), (5, 5, 1, 16), 2, 2),  # CNN3
    ((3, 14, 14, 16), (4, 4, 16, 32), 2, 1),  # CNN3 / CNN5
    ((3, 28, 28, 1), (3, 3, 1, 16), 1, 1),  # CNN5
    ((2, 32, 32, 3), (3, 3, 3, 64), 1, 1),  # CNN7
    ((2, 32, 32, 64), (3, 3, 64, 64), 1, 1),  # CNN7
    ((2, 32, 32, 64), (3, 3, 64, 128), 2, 1),  # CNN7, strided
    ((2, 16, 16, 128), (3, 3, 128, 128), 1, 1),  # CNN7
    ((2, 7, 6, 3), (2, 3, 3, 4), 2, 0),  # non-square kernel, no padding, odd sizes
]


def operands(x_shape, k_shape, seed=0):
    kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
    return jax.random.normal(kx, x_shape), 0.1 * jax.random.normal(kk, k_shape), kg


def close(a, b, scale=1.0):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), LAYERS)
def test_im2col_equals_xla_in_values_and_both_gradients(x_shape, k_shape, stride, padding):
    x, kernel, kg = operands(x_shape, k_shape)
    expected = xla_conv2d(x, kernel, stride, padding)
    close(im2col_conv2d(x, kernel, stride, padding), expected)
    g = jax.random.normal(kg, expected.shape)
    _, ours = jax.vjp(lambda a, k: im2col_conv2d(a, k, stride, padding), x, kernel)
    _, xla = jax.vjp(lambda a, k: xla_conv2d(a, k, stride, padding), x, kernel)
    scale = float(jnp.max(jnp.abs(xla(g)[1])))  # kernel gradients sum over batch × positions
    for got, want in zip(ours(g), xla(g), strict=True):
        close(got, want, scale)


def test_patches_are_the_windows_in_kernel_order():
    """``P[b, h, w, (i, j, c)] = x_pad[b, s·h + i, s·w + j, c]``, checked entry by entry."""
    x = jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 3)
    cols = patches(x, (2, 3), 2, 1)
    x_pad = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    assert cols.shape == (2, 3, 2, 2 * 3 * 3)
    for b, h, w, i, j, c in np.ndindex(2, 3, 2, 2, 3, 3):
        assert cols[b, h, w, (i * 3 + j) * 3 + c] == x_pad[b, 2 * h + i, 2 * w + j, c]


@pytest.mark.parametrize("choice", ["im2col", "slices", "xla"])
@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), [LAYERS[1], LAYERS[5], LAYERS[7]])
def test_conv2d_gradients_equal_xla_whichever_implementation_cpu_chooses(
    monkeypatch, choice, x_shape, k_shape, stride, padding
):
    """Values, input and kernel gradients, and per-member kernel gradients (vmap over a member axis)."""
    monkeypatch.setitem(conv_backends.KERNEL_TERM_RULES, "cpu", lambda *shapes: choice)
    x, kernel, kg = operands(x_shape, k_shape, seed=1)
    weights = jax.random.normal(kg, xla_conv2d(x, kernel, stride, padding).shape)
    ours = lambda x_, k_: jnp.sum(weights * jnp.tanh(conv2d(x_, k_, stride, padding)))
    xla = lambda x_, k_: jnp.sum(weights * jnp.tanh(xla_conv2d(x_, k_, stride, padding)))
    np.testing.assert_array_equal(conv2d(x, kernel, stride, padding), xla_conv2d(x, kernel, stride, padding))
    for got, want in zip(jax.jit(jax.grad(ours, (0, 1)))(x, kernel), jax.grad(xla, (0, 1))(x, kernel), strict=True):
        close(got, want, float(jnp.max(jnp.abs(want))))
    members = jnp.stack([kernel, -2 * kernel, 0.5 * kernel])
    per_member = jax.jit(jax.vmap(jax.grad(ours, 1), (None, 0)))(x, members)
    for i in range(3):
        want = jax.grad(xla, 1)(x, members[i])
        close(per_member[i], want, float(jnp.max(jnp.abs(want))))


def test_the_cpu_rule_takes_im2col_for_many_channels_and_keeps_xla_elsewhere():
    """CNN7's 64/128-channel layers → im2col, its 3-channel layer → slices, CNN3 → XLA; GPU/TPU → XLA."""
    cnn7 = [((128, 32, 32, 64), (3, 3, 64, 64), 1, 1), ((128, 32, 32, 64), (3, 3, 64, 128), 2, 1),
            ((128, 16, 16, 128), (3, 3, 128, 128), 1, 1), ((16, 14, 14, 128), (3, 3, 128, 128), 1, 1)]  # fmt: skip
    for shapes in cnn7:
        assert kernel_term_choice("cpu", *shapes) == "im2col"
    assert kernel_term_choice("cpu", (128, 32, 32, 3), (3, 3, 3, 64), 1, 1) == "slices"
    assert kernel_term_choice("cpu", (128, 28, 28, 1), (5, 5, 1, 16), 2, 2) == "xla"
    assert kernel_term_choice("cpu", (128, 14, 14, 16), (4, 4, 16, 32), 2, 1) == "xla"
    # patches beyond the memory cap: the slices instead (here 4096 × 32 × 32 × 9 × 64 entries)
    assert kernel_term_choice("cpu", (4096, 32, 32, 64), (3, 3, 64, 64), 1, 1) == "slices"
    for platform in ("cuda", "rocm", "tpu"):
        assert all(kernel_term_choice(platform, *shapes) == "xla" for shapes in cnn7)


def test_the_choice_is_static_per_platform_in_the_lowered_program(monkeypatch):
    """The CPU lowering's kernel gradient is a matrix product (im2col), a GPU/TPU lowering is XLA's own
    convolution; a rule for the GPU is honoured there, and an unknown choice fails at trace time."""
    x, kernel, _ = operands((2, 16, 16, 64), (3, 3, 64, 64))
    traced = jax.jit(jax.grad(lambda k: jnp.sum(conv2d(x, k, 1, 1) ** 2))).trace(kernel)

    def counts(platform):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        return text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")

    assert counts("cpu") == (1, 1)  # forward convolution + the kernel gradient's product
    assert counts("cuda") == counts("tpu") == (2, 0)  # forward + XLA's kernel-gradient convolution
    monkeypatch.setitem(conv_backends.KERNEL_TERM_RULES, "cuda", lambda *shapes: "im2col")
    cuda_traced = jax.jit(jax.grad(lambda k: jnp.sum(conv2d(x, k, 1, 1) ** 3))).trace(kernel)
    assert cuda_traced.lower(lowering_platforms=("cuda",)).as_text().count("stablehlo.dot_general") == 1
    monkeypatch.setitem(conv_backends.KERNEL_TERM_RULES, "cpu", lambda *shapes: "winograd")
    with pytest.raises(ValueError, match="rule for 'cpu' chose 'winograd'"):
        jax.grad(lambda k: jnp.sum(conv2d(x, k, 1, 1) ** 4))(kernel)
