"""Which implementation of a convolution's kernel-gradient term each backend runs.

:func:`jaxcert.nets.convolution.conv2d` differentiates as ``dy = conv(dx, W) + conv(x, dW)``; the second
term's transpose is the kernel gradient. Its implementation is chosen per platform and per (static)
shape by a rule in :data:`KERNEL_TERM_RULES`:

    rule(x_shape, kernel_shape, stride, padding) -> "xla" | "slices" | "im2col"

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
KERNEL_TERMS = ("xla", "slices", "im2col")

#: im2col pays on XLA:CPU from this many input channels on (CNN7's 64- and 128-channel layers, 1.3-1.7×
#: XLA's; with 3 channels its patches cost more than they save: ``experiments/RESULTS.md``) ...
MIN_IM2COL_CHANNELS = 32
#: ... while its patches (``k²`` copies of the input) stay below this many entries (1 GiB in float32).
MAX_IM2COL_ENTRIES = 1 << 28
#: Otherwise the shifted slices pay for large per-example images and batches only: at least this many
#: output positions per example ...
MIN_SLICES_POSITIONS = 256
#: ... and at least this many (example, position) pairs in the kernel gradient's sum.
MIN_SLICES_TERMS = 32768


def output_positions(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> int:
    """Output positions per example: ``Π_axis (⌊(size + 2p - k) / s⌋ + 1)``."""
    sizes = [(n + 2 * padding - k) // stride + 1 for n, k in zip(x_shape[1:3], kernel_shape[:2], strict=True)]
    return sizes[0] * sizes[1]


def cpu_kernel_term(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> str:
    """XLA:CPU runs the kernel gradient as one convolution whose inner sum spans the whole batch and
    image, 2.5-4× slower than PyTorch's on CNN7's layers. im2col (one matrix product ``gᵀ P``) replaces
    it for layers with many input channels, the shifted slices for large images with few channels."""
    kh, kw, cin, _ = kernel_shape
    positions = output_positions(x_shape, kernel_shape, stride, padding)
    if cin >= MIN_IM2COL_CHANNELS and x_shape[0] * positions * kh * kw * cin <= MAX_IM2COL_ENTRIES:
        return "im2col"
    if positions >= MIN_SLICES_POSITIONS and x_shape[0] * positions >= MIN_SLICES_TERMS:
        return "slices"
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
