"""Which implementation of a convolution's kernel-gradient term each backend runs.

:func:`jaxcert.nets.convolution.conv2d` differentiates as ``dy = conv(dx, W) + conv(x, dW)``; the second
term's transpose is the kernel gradient. Its implementation is chosen per platform and per (static)
shape by a rule in :data:`KERNEL_TERM_RULES`:

    rule(x_shape, kernel_shape, stride, padding) -> "xla" | "slices" | "im2col" | "im2col-scan" | "im2col-scan-gt"

A platform without a rule (GPU, TPU) runs XLA's own convolution. The choice is made from static shapes
when the program is traced, and the platform branch when it is lowered
(:func:`jax.lax.platform_dependent`), so it is static under ``jit``. The CPU rule is measured
(``experiments/bench_conv.py``, ``experiments/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Callable

Shape = tuple[int, ...]
KernelTermRule = Callable[[Shape, Shape, int, int], str]

#: The implementations a rule may name.
KERNEL_TERMS = ("xla", "slices", "im2col", "im2col-scan", "im2col-scan-gt")

#: im2col pays on XLA:CPU from this many input channels on (CNN7's 64- and 128-channel layers; with 3
#: channels the whole batch's patches cost more than they save: ``experiments/RESULTS.md``). The CPU rule
#: runs it batch chunk by batch chunk (``"im2col-scan"``: 2-7× faster than the whole batch's patches), with
#: the product output channels first (``"im2col-scan-gt"``: 1.3-1.7× less CPU again, a YNNPACK product),
#: which also beats XLA's on the 16-channel layers of CNN3, CNN5 and the small ResNet (1.1-2.4×).
MIN_IM2COL_CHANNELS = 16
#: the patches of one im2col-scan step: at most this many bytes (the per-core L2 cache of the machine it
#: was measured on, 2 MiB, twice over: chunks of 1.8-3.6 MB ran fastest on CNN7's layers) ...
IM2COL_CHUNK_BYTES = 4 * 2**20
#: ... and at most this many (example, position) rows (the fastest steps had 400-1600 rows, even with
#: 1 input channel, where the bytes alone would take the whole batch).
IM2COL_CHUNK_ROWS = 2048
#: (whole-batch im2col, for rules that name ``"im2col"``: its patches, ``k²`` copies of the input, were
#: capped at this many entries, 1 GiB in float32.)
MAX_IM2COL_ENTRIES = 1 << 28
#: Otherwise im2col-scan (before it, the shifted slices) pays for large per-example images and batches
#: only: at least this many output positions per example ...
MIN_SLICES_POSITIONS = 256
#: ... and at least this many (example, position) pairs in the kernel gradient's sum.
MIN_SLICES_TERMS = 32768


def output_positions(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> int:
    """Output positions per example: ``Π_axis (⌊(size + 2p - k) / s⌋ + 1)``."""
    sizes = [(n + 2 * padding - k) // stride + 1 for n, k in zip(x_shape[1:3], kernel_shape[:2], strict=True)]
    return sizes[0] * sizes[1]


def im2col_batch_chunk(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> int:
    """Examples per im2col-scan step: the largest divisor ``c`` of the batch whose patches,
    ``c · positions`` rows of ``kh·kw·C`` float32 entries, fit both :data:`IM2COL_CHUNK_ROWS` and
    :data:`IM2COL_CHUNK_BYTES` (at least 1)."""
    kh, kw, cin, _ = kernel_shape
    positions = output_positions(x_shape, kernel_shape, stride, padding)
    fits = lambda c: c * positions <= IM2COL_CHUNK_ROWS and 4 * c * positions * kh * kw * cin <= IM2COL_CHUNK_BYTES
    batch = x_shape[0]
    return max((c for c in range(1, batch + 1) if batch % c == 0 and fits(c)), default=1)


def cpu_kernel_term(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> str:
    """XLA:CPU runs the kernel gradient as one convolution whose inner sum spans the whole batch and
    image, 2.5-4× slower than PyTorch's on CNN7's layers. im2col in cache-sized batch chunks (a loop of
    matrix products ``g_cᵀ P_c``, :mod:`jaxcert.nets.conv_im2col_gt`) replaces it for layers with many
    input channels and for large images with few channels (where the shifted slices, ``"slices"``, paid
    before); small images with fewer channels (CNN3's first layer) keep XLA's."""
    _, _, cin, _ = kernel_shape
    positions = output_positions(x_shape, kernel_shape, stride, padding)
    if cin >= MIN_IM2COL_CHANNELS:
        return "im2col-scan-gt"
    if positions >= MIN_SLICES_POSITIONS and x_shape[0] * positions >= MIN_SLICES_TERMS:
        return "im2col-scan-gt"  # in cache-sized chunks it beat the shifted slices too (CIFAR 3→64: 2.5×)
    return "xla"


#: platform name (as :func:`jax.lax.platform_dependent` spells it) → rule; others run ``"xla"``.
KERNEL_TERM_RULES: dict[str, KernelTermRule] = {"cpu": cpu_kernel_term}


def kernel_term_choice(platform: str, x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> str:
    """The kernel-gradient implementation ``platform`` runs for these shapes (``"xla"`` without a rule)."""
    rule = KERNEL_TERM_RULES.get(platform)
    choice = "xla" if rule is None else rule(tuple(x_shape), tuple(kernel_shape), stride, padding)
    if choice not in KERNEL_TERMS:
        raise ValueError(f"kernel-gradient rule for {platform!r} chose {choice!r}; known: {', '.join(KERNEL_TERMS)}")
    return choice
