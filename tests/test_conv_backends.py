"""The CPU convolution paths (im2col, per-backend kernel-gradient choice) equal XLA's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.nets import conv_backends
from jaxcert.nets.conv_backends import cf_batch_chunk, im2col_batch_chunk, input_term_choice, kernel_term_choice
from jaxcert.nets.conv_im2col import im2col_conv2d, patches, scanned_im2col_conv2d
from jaxcert.nets.conv_im2col_cf import scanned_im2col_cf_conv2d
from jaxcert.nets.conv_im2col_gt import scanned_im2col_gt_conv2d
from jaxcert.nets.conv_input_phases import phase_conv2d
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


def assert_equals_xla(conv, x, kernel, kg, stride, padding, *, jit=False):
    """``conv(x, kernel)`` equals XLA's convolution in value, input gradient and kernel gradient (the kernel
    gradient to its scale: it sums over batch × positions)."""
    expected = xla_conv2d(x, kernel, stride, padding)
    close(conv(x, kernel), expected)
    g = jax.random.normal(kg, expected.shape)
    _, ours = jax.vjp(conv, x, kernel)
    _, xla = jax.vjp(lambda a, k: xla_conv2d(a, k, stride, padding), x, kernel)
    scale = float(jnp.max(jnp.abs(xla(g)[1])))
    for got, want in zip((jax.jit(ours) if jit else ours)(g), xla(g), strict=True):
        close(got, want, scale)


@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), LAYERS)
def test_im2col_equals_xla_in_values_and_both_gradients(x_shape, k_shape, stride, padding):
    x, kernel, kg = operands(x_shape, k_shape)
    assert_equals_xla(lambda a, k: im2col_conv2d(a, k, stride, padding), x, kernel, kg, stride, padding)


@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), [LAYERS[1], LAYERS[6], LAYERS[7]])
def test_im2col_in_batch_chunks_equals_xla_in_values_and_both_gradients(x_shape, k_shape, stride, padding, chunk):
    x, kernel, kg = operands((4, *x_shape[1:]), k_shape, seed=2)
    scanned = lambda a, k: scanned_im2col_conv2d(a, k, stride, padding, chunk)
    assert_equals_xla(scanned, x, kernel, kg, stride, padding, jit=True)
    with pytest.raises(ValueError, match="im2col batch chunk \\(3\\) must be >= 1 and divide the batch \\(4\\)"):
        scanned_im2col_conv2d(x, kernel, stride, padding, 3)


#: every conv layer shape the nets use (CNN3, CNN5, CNN7 at both datasets' sizes, batch 4) and odd ones:
#: non-square kernels, no padding, stride 3, sizes the stride does not divide, one output row.
ALL_LAYERS = [
    *LAYERS,
    ((4, 28, 28, 1), (3, 3, 1, 64), 1, 1),  # CNN7, Fashion-MNIST
    ((4, 28, 28, 64), (3, 3, 64, 128), 2, 1),  # CNN7, Fashion-MNIST, strided
    ((4, 14, 14, 128), (3, 3, 128, 128), 1, 1),  # CNN7, Fashion-MNIST
    ((4, 9, 8, 3), (3, 3, 3, 4), 3, 1),
    ((4, 7, 7, 3), (3, 2, 3, 5), 1, 0),
    ((4, 5, 9, 2), (5, 3, 2, 3), 2, 2),
    ((4, 3, 3, 2), (3, 3, 2, 3), 1, 0),
]


#: the two chunked forms the CPU rule chooses: output channels first (``g_cᵀ P_c``) and channels first (``P_cᵀ g_c``)
CHUNKED_FORMS = {"gt": scanned_im2col_gt_conv2d, "cf": scanned_im2col_cf_conv2d}


@pytest.mark.parametrize("form", sorted(CHUNKED_FORMS))
@pytest.mark.parametrize("chunk", [2, 4])  # a loop over 2-example chunks; the whole batch in one step
@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), ALL_LAYERS)
def test_chunked_im2col_forms_equal_xla_in_values_and_both_gradients(form, x_shape, k_shape, stride, padding, chunk):
    """The output-channels-first and the channels-first chunks: XLA's values, input and kernel gradients
    (``chunk`` = the batch: one step without a loop)."""
    x, kernel, kg = operands((4, *x_shape[1:]), k_shape, seed=3)
    expected = xla_conv2d(x, kernel, stride, padding)
    ours = lambda a, k: CHUNKED_FORMS[form](a, k, stride, padding, chunk)
    close(ours(x, kernel), expected)
    g = jax.random.normal(kg, expected.shape)
    _, ours_vjp = jax.vjp(ours, x, kernel)
    _, xla_vjp = jax.vjp(lambda a, k: xla_conv2d(a, k, stride, padding), x, kernel)
    scale = float(jnp.max(jnp.abs(xla_vjp(g)[1])))
    for got, want in zip(jax.jit(ours_vjp)(g), xla_vjp(g), strict=True):
        close(got, want, scale)


@pytest.mark.parametrize("form", sorted(CHUNKED_FORMS))
def test_chunked_forms_reject_a_chunk_that_does_not_divide_the_batch(form):
    x, kernel, _ = operands((4, 6, 6, 2), (3, 3, 2, 3))
    for chunk in (3, 0):
        message = f"im2col batch chunk \\({chunk}\\) must be >= 1 and divide the batch \\(4\\)"
        with pytest.raises(ValueError, match=message):
            CHUNKED_FORMS[form](x, kernel, 1, 1, chunk)


def test_the_gt_kernel_gradient_is_one_ynnpack_product_per_chunk_without_eigen_or_transposed_patches():
    """What the form is for: on XLA:CPU the compiled kernel gradient's product is a YNNPACK fusion (no Eigen
    ``dot``, no convolution), inside one loop, whose operands are the chunk's NHWC patches and the small
    transposed output gradient; ``scanned_im2col_conv2d``'s transpose, the same sum, is an Eigen ``dot``."""
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU property")
    batch, k_shape = 8, (3, 3, 64, 64)
    x, kernel, kg = operands((batch, 12, 12, 64), k_shape)
    g = jax.random.normal(kg, (batch, 12, 12, 64))

    def compiled(conv):
        grad = lambda x_, g_: jax.linear_transpose(lambda k: conv(x_, k, 1, 1, 2), kernel)(g_)[0]
        return jax.jit(grad).lower(x, g).compile().as_text()

    def products(text):
        body = [line for line in text.splitlines() if " dot(" in line or "__ynn_fusion" in line]
        ynn = sum("__ynn_fusion" in line and "fusion(" in line for line in body)
        eigen = sum(" dot(" in line and "ynn" not in line for line in body) - ynn  # a YNN fusion wraps one dot
        return ynn, eigen

    gt, plain = compiled(scanned_im2col_gt_conv2d), compiled(scanned_im2col_conv2d)
    assert products(gt) == (1, 0), gt
    assert products(plain)[0] == 0 and products(plain)[1] >= 1
    for text in (gt, plain):
        assert text.count(" while(") == 1 and " convolution(" not in text
    assert "f32[64,288]" in gt and "f32[64,576]" in gt  # g_cᵀ (O × 2·12·12) and the (O, 9C) sum in the carry


def test_the_cf_kernel_gradient_is_one_ynnpack_product_per_chunk_on_channels_first_patches():
    """On XLA:CPU the channels-first form's kernel gradient is one loop whose product ``P_cᵀ g_c`` is a YNNPACK
    fusion (no Eigen ``dot``, no convolution), over the chunk's (k²C, K) patches, summed into a (k²C, O) carry."""
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU property")
    x, kernel, kg = operands((8, 12, 12, 1), (3, 3, 1, 16))
    g = jax.random.normal(kg, (8, 12, 12, 16))
    grad = lambda x_, g_: jax.linear_transpose(lambda k: scanned_im2col_cf_conv2d(x_, k, 1, 1, 2), kernel)(g_)[0]
    text = jax.jit(grad).lower(x, g).compile().as_text()
    body = [line for line in text.splitlines() if " dot(" in line or "__ynn_fusion" in line]
    ynn = sum("__ynn_fusion" in line and "fusion(" in line for line in body)
    assert (ynn, sum(" dot(" in line and "ynn" not in line for line in body) - ynn) == (1, 0), text
    assert text.count(" while(") == 1 and " convolution(" not in text
    assert "f32[9,288]" in text and "f32[9,16]" in text  # P_cᵀ (9C × 2·12·12) and the (9C, O) sum


def test_the_kernel_gradient_in_chunks_is_one_loop_without_the_whole_batch_patches():
    """The transpose accumulates ``Σ_chunks P_cᵀ g_c`` in a loop that rebuilds each chunk's patches: no
    buffer of the whole batch's patches (``B·H·W × 9·C``) in the program."""
    batch, k_shape = 16, (3, 3, 64, 64)
    x, kernel, _ = operands((batch, 16, 16, 64), k_shape)
    chunk = im2col_batch_chunk(x.shape, k_shape, 1, 1)
    assert 1 <= chunk < batch and batch % chunk == 0
    text = jax.jit(jax.grad(lambda k: jnp.sum(conv2d(x, k, 1, 1) ** 2))).lower(kernel).as_text()
    assert text.count("stablehlo.while") == 1
    assert f"{batch // chunk}x{chunk}x16x16x576xf32" not in text and "16x16x16x576xf32" not in text
    assert f"{chunk}x16x16x576xf32" in text  # one chunk's patches inside the loop


def test_patches_are_the_windows_in_kernel_order():
    """``P[b, h, w, (i, j, c)] = x_pad[b, s·h + i, s·w + j, c]``, checked entry by entry."""
    x = jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 3)
    cols = patches(x, (2, 3), 2, 1)
    x_pad = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    assert cols.shape == (2, 3, 2, 2 * 3 * 3)
    for b, h, w, i, j, c in np.ndindex(2, 3, 2, 2, 3, 3):
        assert cols[b, h, w, (i * 3 + j) * 3 + c] == x_pad[b, 2 * h + i, 2 * w + j, c]


def assert_conv2d_gradients_equal_xla(x, kernel, kg, stride, padding, *, member_gradient):
    """conv2d's input and kernel gradients of a weighted loss equal XLA's, and so do the gradients in argument
    ``member_gradient`` (0: input, 1: kernel) vmapped over three member kernels; returns both losses."""
    weights = jax.random.normal(kg, xla_conv2d(x, kernel, stride, padding).shape)
    ours = lambda x_, k_: jnp.sum(weights * jnp.tanh(conv2d(x_, k_, stride, padding)))
    xla = lambda x_, k_: jnp.sum(weights * jnp.tanh(xla_conv2d(x_, k_, stride, padding)))
    for got, want in zip(jax.jit(jax.grad(ours, (0, 1)))(x, kernel), jax.grad(xla, (0, 1))(x, kernel), strict=True):
        close(got, want, float(jnp.max(jnp.abs(want))))
    members = jnp.stack([kernel, -2 * kernel, 0.5 * kernel])
    per_member = jax.jit(jax.vmap(jax.grad(ours, member_gradient), (None, 0)))(x, members)
    for i in range(3):
        want = jax.grad(xla, member_gradient)(x, members[i])
        close(per_member[i], want, float(jnp.max(jnp.abs(want))))
    return ours, xla


@pytest.mark.parametrize("choice", ["im2col", "im2col-scan", "im2col-scan-gt", "im2col-scan-cf", "slices", "xla"])
@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), [LAYERS[1], LAYERS[5], LAYERS[7]])
def test_conv2d_gradients_equal_xla_whichever_implementation_cpu_chooses(
    monkeypatch, choice, x_shape, k_shape, stride, padding
):
    """Values, input and kernel gradients, and per-member kernel gradients (vmap over a member axis);
    the chunked forms one example per step (a loop over the batch)."""
    monkeypatch.setitem(conv_backends.KERNEL_TERM_RULES, "cpu", lambda *shapes: choice)
    for budget in ("IM2COL_CHUNK_ROWS", "CF_CHUNK_ROWS", "IM2COL_MIN_CHUNK"):
        monkeypatch.setattr(conv_backends, budget, 1)
    assert (
        im2col_batch_chunk(x_shape, k_shape, stride, padding) == cf_batch_chunk(x_shape, k_shape, stride, padding) == 1
    )
    x, kernel, kg = operands(x_shape, k_shape, seed=1)
    np.testing.assert_array_equal(conv2d(x, kernel, stride, padding), xla_conv2d(x, kernel, stride, padding))
    assert_conv2d_gradients_equal_xla(x, kernel, kg, stride, padding, member_gradient=1)


def test_the_cpu_rule_takes_channels_first_chunks_for_thin_layers_gt_chunks_for_wide_ones_and_xla_elsewhere():
    """Thin stride-1 layers (patch width ``kh·kw·C ≤ 48``: the 1- and 3-channel first layers of CNN5 and CNN7;
    at least 4096 terms) → im2col-scan-cf; CNN7's other layers and the 16-channel layers of CNN3 and CNN5 →
    im2col-scan-gt; small images with a few channels and a wider patch → XLA; GPU/TPU → XLA. Each chunk the
    largest divisor of the batch within its rows budget, but at least two examples."""
    thin = [((128, 28, 28, 1), (3, 3, 1, 64), 1, 1), ((128, 32, 32, 3), (3, 3, 3, 64), 1, 1),
            ((128, 28, 28, 1), (3, 3, 1, 16), 1, 1), ((128, 8, 8, 3), (4, 4, 3, 8), 1, 1)]  # fmt: skip
    wide = [((128, 32, 32, 64), (3, 3, 64, 64), 1, 1), ((128, 32, 32, 64), (3, 3, 64, 128), 2, 1),
            ((128, 16, 16, 128), (3, 3, 128, 128), 1, 1), ((16, 14, 14, 128), (3, 3, 128, 128), 1, 1),
            ((128, 28, 28, 64), (3, 3, 64, 64), 1, 1), ((4096, 32, 32, 64), (3, 3, 64, 64), 1, 1),
            ((128, 14, 14, 16), (4, 4, 16, 32), 2, 1), ((128, 28, 28, 16), (4, 4, 16, 16), 2, 1),
            ((128, 28, 28, 8), (3, 3, 8, 32), 1, 1), ((128, 32, 32, 3), (5, 5, 3, 16), 2, 2)]  # fmt: skip
    for shapes, choice, chunk_of, budget in [*((s, "im2col-scan-cf", cf_batch_chunk, "CF_CHUNK_ROWS") for s in thin),
                                             *((s, "im2col-scan-gt", im2col_batch_chunk, "IM2COL_CHUNK_ROWS")
                                               for s in wide)]:  # fmt: skip
        assert kernel_term_choice("cpu", *shapes) == choice, shapes
        batch, rows = shapes[0][0], conv_backends.output_positions(*shapes)
        fits = lambda c: c * rows <= getattr(conv_backends, budget)
        chunk = chunk_of(*shapes)
        assert batch % chunk == 0 and chunk >= conv_backends.IM2COL_MIN_CHUNK and (fits(chunk) or chunk == 2)
        assert not any(fits(c) for c in range(chunk + 1, batch + 1) if batch % c == 0)
    # the fitted chunks: 392 rows (gt), 3136 rows (cf), two examples where one is already over the budget
    assert [im2col_batch_chunk(*s) for s in wide[:7]] == [2, 2, 2, 2, 2, 2, 8]
    assert [cf_batch_chunk(*s) for s in thin[:3]] == [4, 2, 4]
    # thin stride-2 layers (CNN3's first) at a training batch lost in whole training steps: XLA's; over
    # CROWN-IBP's 9 margin rows per example (1 152 rows, 225 792 terms) the cf loop
    assert kernel_term_choice("cpu", (128, 28, 28, 1), (5, 5, 1, 16), 2, 2) == "xla"
    assert kernel_term_choice("cpu", (128, 28, 28, 1), (4, 4, 1, 16), 2, 1) == "xla"
    assert kernel_term_choice("cpu", (1152, 28, 28, 1), (5, 5, 1, 16), 2, 2) == "im2col-scan-cf"
    assert im2col_batch_chunk((3, 28, 28, 64), (3, 3, 64, 64), 1, 1) == 3  # no divisor ≥ 2 below the batch
    assert kernel_term_choice("cpu", (128, 14, 14, 8), (4, 4, 8, 32), 2, 1) == "xla"
    assert kernel_term_choice("cpu", (128, 8, 8, 6), (3, 3, 6, 8), 1, 1) == "xla"  # width 54, 64 positions
    assert kernel_term_choice("cpu", (8, 8, 8, 1), (3, 3, 1, 4), 1, 1) == "xla"  # thin, but 512 terms: test-sized
    for platform in ("cuda", "rocm", "tpu"):
        assert all(kernel_term_choice(platform, *shapes) == "xla" for shapes in thin + wide)


@pytest.mark.parametrize(
    ("x_shape", "k_shape", "stride", "padding", "patches_t"),
    [((8, 28, 28, 1), (3, 3, 1, 64), 1, 1, "9x3136xf32"), ((32, 28, 28, 1), (3, 3, 1, 16), 1, 1, "9x3136xf32")],
)
def test_conv2d_takes_the_channels_first_chunks_on_the_thin_first_layers_of_cnn7_and_cnn5(
    x_shape, k_shape, stride, padding, patches_t
):
    """The CPU lowering of conv2d's kernel gradient on CNN7's and CNN5's first layers is one loop over the
    channels-first patches ``P_cᵀ`` (k²C × 3136: 4 examples of 28×28), not XLA's convolution."""
    x, kernel, _ = operands(x_shape, k_shape)
    traced = jax.jit(jax.grad(lambda k: jnp.sum(conv2d(x, k, stride, padding) ** 2))).trace(kernel)
    text = traced.lower(lowering_platforms=("cpu",)).as_text()
    assert text.count("stablehlo.while") == 1 and text.count("stablehlo.convolution") == 1  # the forward only
    assert patches_t in text


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


@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), ALL_LAYERS)
def test_the_phase_form_equals_xla_in_values_and_both_gradients(x_shape, k_shape, stride, padding):
    """Every layer shape (strides 1, 2, 3; sizes the stride does not divide; kernels smaller than the stride
    in one axis): values, input gradient (what the phases are for) and kernel gradient."""
    x, kernel, kg = operands(x_shape, k_shape, seed=4)
    assert_equals_xla(lambda a, k: phase_conv2d(a, k, stride, padding), x, kernel, kg, stride, padding, jit=True)


@pytest.mark.parametrize(("x_shape", "k_shape", "stride", "padding"), [LAYERS[0], LAYERS[1], LAYERS[5], LAYERS[7]])
def test_conv2d_gradients_equal_xla_with_the_input_gradient_by_phases(monkeypatch, x_shape, k_shape, stride, padding):
    """conv2d with the input term forced to the phases: XLA's input and kernel gradients, per-member (vmap)
    input gradients, and forward derivatives."""
    monkeypatch.setitem(conv_backends.INPUT_TERM_RULES, "cpu", lambda *shapes: "phases")
    x, kernel, kg = operands(x_shape, k_shape, seed=5)
    ours, xla = assert_conv2d_gradients_equal_xla(x, kernel, kg, stride, padding, member_gradient=0)
    tangents = (jnp.ones_like(x), jnp.ones_like(kernel))
    got, want = jax.jvp(ours, (x, kernel), tangents)[1], jax.jvp(xla, (x, kernel), tangents)[1]
    close(got, want, float(jnp.abs(want)))


def test_the_cpu_input_gradient_of_a_stride_2_layer_is_four_stride_1_convolutions_and_xla_elsewhere():
    """On CPU the input gradient of CNN7's, CNN3's and CNN5's stride-2 layers runs as s² = 4 stride-1
    convolutions without input dilation (the rule's "phases"); stride 1, GPU and TPU keep XLA's transpose, a
    convolution of the output gradient dilated by 2; an unknown choice fails at trace time."""
    strided = [((128, 28, 28, 64), (3, 3, 64, 128), 2, 1), ((128, 14, 14, 16), (4, 4, 16, 32), 2, 1),
               ((128, 28, 28, 16), (4, 4, 16, 16), 2, 1), ((128, 28, 28, 1), (5, 5, 1, 16), 2, 2)]  # fmt: skip
    for shapes in strided:
        assert input_term_choice("cpu", *shapes) == "phases"
        assert all(input_term_choice(platform, *shapes) == "xla" for platform in ("cuda", "rocm", "tpu"))
    assert input_term_choice("cpu", (128, 14, 14, 128), (3, 3, 128, 128), 1, 1) == "xla"
    assert input_term_choice("cpu", (4, 9, 8, 3), (3, 3, 3, 4), 3, 1) == "xla"  # stride 3: not measured
    x, kernel, _ = operands((2, 28, 28, 64), (3, 3, 64, 128))
    traced = jax.jit(jax.grad(lambda x_: jnp.sum(conv2d(x_, kernel, 2, 1) ** 2))).trace(x)

    def convolutions(platform):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        return [line for line in text.splitlines() if "stablehlo.convolution" in line]

    cpu, cuda = convolutions("cpu"), convolutions("cuda")
    assert len(cpu) == 5 and all("lhs_dilate = [1, 1]" in line for line in cpu)  # forward + 4 phases
    assert sum("stride = [1, 1]" in line for line in cpu) == 4
    assert len(cuda) == 2 and "lhs_dilate = [2, 2]" in cuda[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(conv_backends.INPUT_TERM_RULES, "cpu", lambda *shapes: "winograd")
        with pytest.raises(ValueError, match="input-gradient rule for 'cpu' chose 'winograd'"):
            jax.grad(lambda x_: jnp.sum(conv2d(x_, kernel, 2, 1) ** 3))(x)
