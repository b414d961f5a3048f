"""Which implementation of a convolution's kernel-gradient term each backend runs.

:func:`jaxcert.nets.convolution.conv2d` differentiates as ``dy = conv(dx, W) + conv(x, dW)``; the second
term's transpose is the kernel gradient. Its implementation is chosen per platform and per (static)
shape by a rule in :data:`KERNEL_TERM_RULES`:

    rule(x_shape, kernel_shape, stride, padding) -> one of KERNEL_TERMS ("xla", "im2col-scan-gt", ...)

A platform without a rule (GPU, TPU) runs XLA's own convolution. The choice is made from static shapes
when the program is traced, and the platform branch when it is lowered
(:func:`jax.lax.platform_dependent`), so it is static under ``jit``. The CPU rule is measured
(``experiments/bench_conv.py``, ``experiments/bench_kernel_grad.py``, ``experiments/RESULTS.md``).

The first term's implementation (its transpose is the input gradient) is chosen the same way by a rule in
:data:`INPUT_TERM_RULES`, ``-> "xla" | "phases"`` (CPU: the phases at stride 2).
"""

from __future__ import annotations

from collections.abc import Callable

Shape = tuple[int, ...]
KernelTermRule = Callable[[Shape, Shape, int, int], str]

#: The implementations a rule may name.
KERNEL_TERMS = ("xla", "slices", "im2col", "im2col-scan", "im2col-scan-gt", "im2col-scan-cf")

#: im2col pays on XLA:CPU from this many input channels on (CNN7's 64- and 128-channel layers; with 3
#: channels the whole batch's patches cost more than they save: ``experiments/RESULTS.md``). The CPU rule
#: runs it batch chunk by batch chunk (``"im2col-scan"``: 2-7× faster than the whole batch's patches), with
#: the product output channels first (``"im2col-scan-gt"``: 1.3-1.7× less CPU again, a YNNPACK product),
#: which also beats XLA's on the 16-channel layers of CNN3, CNN5 and the small ResNet (1.1-2.4×).
MIN_IM2COL_CHANNELS = 16
#: the patches of one im2col-scan(-gt) step: at most this many (example, position) rows ... Refitted for the gt
#: form on every conv layer of CNN3, CNN5 and CNN7 (Fashion-MNIST and CIFAR sizes, batch 128): 392 rows ran
#: fastest or within 5 % of it everywhere; the 16-channel stride-2 layers lost 12-60 % at 784-1568 rows
#: (the rule before gave 1568: bytes ≤ 4 MiB and rows ≤ 2048), the 64/128-channel ones 0-10 %.
IM2COL_CHUNK_ROWS = 400
#: ... but at least this many examples (when the batch allows it): one example per step cost 10-35 % more
#: than two on every layer measured (28×28 and 32×32 64→64: 784 / 1024 rows per example, 2 per step won).
IM2COL_MIN_CHUNK = 2
#: Patch width ``kh·kw·C`` up to which the kernel gradient takes the channels-first chunks
#: (``"im2col-scan-cf"``, :mod:`jaxcert.nets.conv_im2col_cf`): thin first layers. Measured at batch 128
#: (CPU ms, cf / gt / XLA): width 9 (28×28 1→64) 3.4 / 11.6 / 9.1, 9 (28×28 1→16) 1.0 / 2.3 / 2.3,
#: 16 (1→16 k4 s2) 0.5 / 0.8 / 0.6, 25 (1→16 k5 s2) 0.6 / 1.3 / 0.8, 27 (32×32 3→64) 11.2 / 20.4 / 32.9,
#: 36 (28×28 4→32) 3.9 / 8.8 / 11.8; from 72 (8→32) it loses to gt (10.5 / 9.9), at 75 (3→16 k5 s2) it ties
#: XLA (2.1 / 2.1).
MAX_CF_PATCH_WIDTH = 48
#: ... at these strides from :data:`MIN_CF_TERMS` terms; at other strides from :data:`MIN_CF_STRIDED_TERMS`.
#: In a whole training step CNN3's 28×28 1→16 k5 s2 layer at batch 128 (25 088 terms) lost with cf what it won
#: alone (IBP train step, CPU: 16.5 ms with cf, 15.0 ms with XLA's, against 0.6 / 0.8 ms for the kernel
#: gradient alone), while the same layer's kernel gradient over CROWN-IBP's 1 152 margin rows (225 792 terms,
#: :mod:`jaxcert.bounds.conv_transpose`) won: CROWN-IBP train step 4-5 % less CPU with cf.
CF_STRIDES = (1,)
#: terms from which the cf loop pays at a stride outside :data:`CF_STRIDES` (between the two measured above)
MIN_CF_STRIDED_TERMS = 1 << 17
#: ... and at least this many (example, position) pairs (the smallest layer measured had 25 088; below this
#: bound, test-sized nets, a loop of patches is not worth its compilation and XLA's is kept).
MIN_CF_TERMS = 4096
#: Rows per im2col-scan-cf step (at least :data:`IM2COL_MIN_CHUNK` examples): 3136 (4 examples of 28×28)
#: ran fastest on the 28×28 thin layers (1568 and 6272 rows 10-50 % slower), 1568-3136 on 14×14 outputs.
CF_CHUNK_ROWS = 3136
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


def batch_chunk(batch: int, positions: int, max_rows: int) -> int:
    """Examples per step of a chunked loop over a batch: the largest divisor ``c`` of ``batch`` with
    ``c · positions ≤ max_rows``, raised to the smallest divisor ``≥`` :data:`IM2COL_MIN_CHUNK` if it is
    smaller (the whole batch if none is)."""
    divisors = [c for c in range(1, batch + 1) if batch % c == 0]
    fitting = max((c for c in divisors if c * positions <= max_rows), default=1)
    return max(fitting, min((c for c in divisors if c >= IM2COL_MIN_CHUNK), default=batch))


def im2col_batch_chunk(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> int:
    """Examples per im2col-scan(-gt) step: :func:`batch_chunk` with :data:`IM2COL_CHUNK_ROWS` rows."""
    positions = output_positions(x_shape, kernel_shape, stride, padding)
    return batch_chunk(x_shape[0], positions, IM2COL_CHUNK_ROWS)


def cf_batch_chunk(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> int:
    """Examples per im2col-scan-cf step: :func:`batch_chunk` with :data:`CF_CHUNK_ROWS` rows."""
    positions = output_positions(x_shape, kernel_shape, stride, padding)
    return batch_chunk(x_shape[0], positions, CF_CHUNK_ROWS)


def cpu_kernel_term(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> str:
    """XLA:CPU runs the kernel gradient as one convolution whose inner sum spans the whole batch and
    image, 2.5-4× slower than PyTorch's on CNN7's layers. im2col in cache-sized batch chunks replaces it:
    channels first (``P_cᵀ g_c``, :mod:`jaxcert.nets.conv_im2col_cf`) for thin layers, patch width
    ``kh·kw·C ≤`` :data:`MAX_CF_PATCH_WIDTH` (from :data:`MIN_CF_TERMS` terms at a stride in
    :data:`CF_STRIDES`, from :data:`MIN_CF_STRIDED_TERMS` at others); output channels first (``g_cᵀ P_c``,
    :mod:`jaxcert.nets.conv_im2col_gt`) for layers with many input channels and for large images with a
    few (the 8-channel 28×28 3×3 layer: 2× XLA's); smaller images with a few channels keep XLA's."""
    kh, kw, cin, _ = kernel_shape
    positions = output_positions(x_shape, kernel_shape, stride, padding)
    min_cf_terms = MIN_CF_TERMS if stride in CF_STRIDES else MIN_CF_STRIDED_TERMS
    if kh * kw * cin <= MAX_CF_PATCH_WIDTH and x_shape[0] * positions >= min_cf_terms:
        return "im2col-scan-cf"
    if cin >= MIN_IM2COL_CHANNELS:
        return "im2col-scan-gt"
    if positions >= MIN_SLICES_POSITIONS and x_shape[0] * positions >= MIN_SLICES_TERMS:
        return "im2col-scan-gt"  # in cache-sized chunks it beat the shifted slices too (CIFAR 3→64: 2.5×)
    return "xla"


#: platform name (as :func:`jax.lax.platform_dependent` spells it) → rule; others run ``"xla"``.
KERNEL_TERM_RULES: dict[str, KernelTermRule] = {"cpu": cpu_kernel_term}

#: The implementations of the input term ``conv(dx, W)`` (whose transpose is the input gradient) a rule may name.
INPUT_TERMS = ("xla", "phases")
#: Strides at which the CPU input gradient runs by phases (measured at 2 only; the IBP pair's input gradients
#: at batch 128, CPU ms: CNN7's 28×28 64→128 119.1 → 109.0, CNN5's 28×28 16→16 k4 22.1 → 17.0, CNN3's 14×14
#: 16→32 k4 3.6 → 2.5; whole IBP train steps −4 % on CNN7, −12 % on CNN5).
PHASE_STRIDES = (2,)


def cpu_input_term(x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> str:
    """XLA:CPU transposes a strided convolution as a convolution of the dilated output gradient on Eigen;
    as ``s²`` stride-1 convolutions on the input's phases (:mod:`jaxcert.nets.conv_input_phases`) it runs
    on YNNPACK at stride 2."""
    return "phases" if stride in PHASE_STRIDES else "xla"


#: platform → rule for the input term; others run ``"xla"``.
INPUT_TERM_RULES: dict[str, KernelTermRule] = {"cpu": cpu_input_term}


def _choice(rules: dict[str, KernelTermRule], known: tuple[str, ...], what: str, platform: str, *shapes: object) -> str:
    """What ``rules[platform]`` names for these shapes (``"xla"`` without a rule); an unknown name fails."""
    rule = rules.get(platform)
    choice = "xla" if rule is None else rule(*shapes)  # type: ignore[arg-type]
    if choice not in known:
        raise ValueError(f"{what} rule for {platform!r} chose {choice!r}; known: {', '.join(known)}")
    return choice


def input_term_choice(platform: str, x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> str:
    """The input-term implementation ``platform`` runs for these shapes (``"xla"`` without a rule)."""
    shapes = (tuple(x_shape), tuple(kernel_shape), stride, padding)
    return _choice(INPUT_TERM_RULES, INPUT_TERMS, "input-gradient", platform, *shapes)


def kernel_term_choice(platform: str, x_shape: Shape, kernel_shape: Shape, stride: int, padding: int) -> str:
    """The kernel-gradient implementation ``platform`` runs for these shapes (``"xla"`` without a rule)."""
    shapes = (tuple(x_shape), tuple(kernel_shape), stride, padding)
    return _choice(KERNEL_TERM_RULES, KERNEL_TERMS, "kernel-gradient", platform, *shapes)
