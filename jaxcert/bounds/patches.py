"""Back-substitution of rows that live on a window of a convolutional layer ("patches mode").

An intermediate row of CROWN bounds one neuron ``(h, w, c)`` of a convolutional pre-activation. Carried
back through Conv / ReLU / Normalize / BatchNorm layers, its coefficients are non-zero only on the
neuron's receptive field: a ``K × K`` window (all channels) of each earlier layer's output, whose
top-left corner is

    top = h · S - P,      left = w · S - P,

where, going back through a convolution of kernel ``k``, stride ``s`` and padding ``p``,

    K ← (K - 1) · s + k,      S ← S · s,      P ← P · s + p          (K = S = 1, P = 0 at the neuron).

So a row is stored as its window plus the grid position ``(h, w)`` of its neuron, instead of a dense map
(B, R, H, W, C): memory ``O(B · R · K² · C)`` instead of ``O(B · R · H · W · C)``. Rows are grouped by
position, ``A`` (B, P, Rp, K, K, C) with positions (B', P): the rows of all channels of one position
share their window, so the relaxation and the input box are gathered once per position, not per row
(CNN3's second ReLU: a 4×4×16 window of the first ReLU's 14×14×16 output, 12× smaller; auto_LiRPA's
"patches mode" is the published example of the idea). The backward rules of :mod:`jaxcert.bounds.backsub`
become, on windows:

    Conv       A ← (transpose of the VALID convolution with stride s) A,   a ← a + ⟨A, bias⟩,
               then the coefficients on positions outside the layer's input (its zero padding) are
               dropped: a padded input is the constant 0.
    Normalize, BatchNorm (per channel, y = g ⊙ x + o):   A ← g ⊙ A,   a ← a + ⟨A, o⟩.
    ReLU       the rule of :func:`jaxcert.bounds.relu_rules.backward_relu`, with the relaxation
               ``(α, s, t)`` gathered on each row's window (the "window" rule of the layer kind,
               :mod:`jaxcert.bounds.layer_rules`; a kind without one raises).
    input box  min = ⟨A, c_win⟩ - ⟨|A|, r_win⟩ + a   (the box's centre and radius gathered on the window).

The result equals the dense back-substitution to float tolerance (tested against it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxcert.bounds.conv_transpose import conv_transpose
from jaxcert.bounds.layer_rules import has_rule, rule_for
from jaxcert.bounds.relu_slopes import ReluLines
from jaxcert.bounds.row_sums import sum_window
from jaxcert.nets.layers import Arch, BatchNorm, Conv, LayerSpec, Normalize
from jaxcert.nets.network import LayerParams, shapes

#: Windows whose transposed convolution, as a matrix, has at most this many entries are carried back by
#: one matrix product (faster on CPU than millions of tiny convolutions; CNN3: 256 × 121); larger ones by
#: the convolution itself (a matrix would cost more multiplications than the convolution).
MAX_MATRIX_ENTRIES = 2**20

#: Affine layers a window can be carried back through (and non-affine ones with a "window" rule).
WINDOW_LAYERS = (Conv, Normalize, BatchNorm)


def _carries_windows(spec: LayerSpec) -> bool:
    if not spec.is_affine:
        return has_rule(spec, "window")
    return isinstance(spec, WINDOW_LAYERS)


def supports_windows(arch: Arch, in_shape: tuple[int, ...]) -> bool:
    """True if every layer of ``arch`` is a Conv / Normalize / BatchNorm, or a non-affine layer whose kind
    has a "window" rule (ReLU; :mod:`jaxcert.bounds.layer_rules`), on HWC images."""
    return len(in_shape) == 3 and all(_carries_windows(spec) for spec in arch)


@dataclasses.dataclass(frozen=True)
class Window:
    """Static geometry of the rows' windows on one layer: size ``K``, stride ``S``, offset ``P``."""

    size: int = 1
    stride: int = 1
    offset: int = 0

    def through_conv(self, conv: Conv) -> Window:
        """The window on the input of ``conv`` of a window on its output."""
        size = (self.size - 1) * conv.stride + conv.kernel
        return Window(size, self.stride * conv.stride, self.offset * conv.stride + conv.padding)


def layer_windows(arch: Arch, in_shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], Window]]:
    """``(shape of the input of layer i, window of a row of the output of arch on it)`` for every layer,
    from the last layer down to the first."""
    layer_shapes = shapes(arch, in_shape)
    window, out = Window(), []
    for i in reversed(range(len(arch))):
        if isinstance(arch[i], Conv):
            window = window.through_conv(arch[i])
        out.append((layer_shapes[i], window))
    return out


def window_elements(arch: Arch, in_shape: tuple[int, ...]) -> int:
    """The largest window (``K² · C`` elements) of a row of the output of ``arch`` on any of its layers."""
    out_channels = shapes(arch, in_shape)[-1][-1]
    return max([out_channels, *(w.size**2 * shape[-1] for shape, w in layer_windows(arch, in_shape))])


def _index(pos: jax.Array, window: Window, extent: int) -> tuple[jax.Array, jax.Array]:
    """Positions (…, K) covered by the windows of the grid positions ``pos`` (…), and which lie in [0, extent)."""
    idx = pos[..., None] * window.stride - window.offset + jnp.arange(window.size)
    return jnp.clip(idx, 0, extent - 1), (idx >= 0) & (idx < extent)


def window_mask(h: jax.Array, w: jax.Array, window: Window, height: int, width: int) -> jax.Array:
    """(B', P, 1, K, K, 1) float mask: 1 where the window lies inside the ``height × width`` image."""
    _, vh = _index(h, window, height)
    _, vw = _index(w, window, width)
    return (vh[..., :, None] & vw[..., None, :])[:, :, None, :, :, None].astype(jnp.float32)


def gather_windows(
    x: jax.Array, h: jax.Array, w: jax.Array, window: Window, examples: jax.Array | None = None
) -> jax.Array:
    """The windows of ``x`` (B, H, W, C) at grid positions ``h``, ``w`` (B' ∈ {1, B}, P): (B, P, 1, K, K, C)
    (the 1 broadcasts over the rows of a position), zero outside the image. With ``examples`` (B', P) the
    window of position ``p`` is taken from example ``examples[:, p]`` of ``x`` instead: (B', P, 1, K, K, C)
    (rows of (example, neuron) pairs, :mod:`jaxcert.bounds.pair_rows`)."""
    batch, height, width, _ = x.shape
    ih, vh = _index(h, window, height)
    iw, vw = _index(w, window, width)
    b = jnp.arange(batch)[:, None, None, None] if examples is None else examples[..., None, None]
    windows = x[b, ih[..., :, None], iw[..., None, :]]
    inside = (vh[..., :, None] & vw[..., None, :])[..., None]
    return jnp.where(inside, windows, jnp.zeros((), x.dtype))[:, :, None]


def transpose_conv_window(conv: Conv, p: dict[str, jax.Array], A: jax.Array) -> jax.Array:
    """``(…, K, K, C_out) -> (…, (K-1)s+k, (K-1)s+k, C_in)``: the transpose of ``conv`` without padding
    (as a matrix product when the matrix is small, see :data:`MAX_MATRIX_ENTRIES`)."""
    lead, (k, _, c_out) = A.shape[:-3], A.shape[-3:]
    A = A.reshape(-1, 1, k, k, c_out)
    batch, rows = A.shape[:2]
    valid = dataclasses.replace(conv, padding=0)
    size = (k - 1) * conv.stride + conv.kernel
    in_shape = (size, size, p["kernel"].shape[2])
    if (k * k * c_out) * math.prod(in_shape) <= MAX_MATRIX_ENTRIES:  # small windows: one GEMM
        basis = jnp.eye(k * k * c_out, dtype=A.dtype).reshape(-1, k, k, c_out)
        matrix = conv_transpose(valid, p["kernel"], basis, in_shape).reshape(k * k * c_out, -1)
        return (A.reshape(batch, rows, -1) @ matrix).reshape(*lead, *in_shape)
    back = conv_transpose(valid, p["kernel"], A.reshape(batch * rows, *A.shape[2:]), in_shape)
    return back.reshape(*lead, *in_shape)


def carry_windows(
    arch: Arch,
    params: LayerParams,
    A: jax.Array,
    const: jax.Array,
    h: jax.Array,
    w: jax.Array,
    lines: Mapping[int, ReluLines],
    in_shape: tuple[int, ...],
    window: Window = Window(),
    local_lines: Callable[[int, Callable[[jax.Array], jax.Array]], Sequence[jax.Array]] | None = None,
    examples: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, Window]:
    """``(A, const, window)`` of the window rows ``A`` on the output of ``arch`` carried back to its input
    (shape ``in_shape``) by the rules of the module doc, without the input box: what
    :func:`backsubstitute_windows` concretises. ``examples`` (B', P): see :func:`gather_windows`."""
    layer_shapes = shapes(arch, in_shape)
    for i in reversed(range(len(arch))):
        spec, p = arch[i], params[i]
        if not spec.is_affine:
            backward = rule_for(spec, "window", "backsubstitute_windows")
            gather = functools.partial(gather_windows, h=h, w=w, window=window, examples=examples)
            local = [gather(f) for f in lines[i]] if local_lines is None else local_lines(i, gather)
            A, const = backward(A, const, *local)
        elif isinstance(spec, Conv):
            const = const + sum_window(A * p["bias"])
            A = transpose_conv_window(spec, p, A)
            window = window.through_conv(spec)
            height, width, _ = layer_shapes[i]
            A = A * window_mask(h, w, window, height, width).astype(A.dtype)
        elif isinstance(spec, Normalize | BatchNorm):
            const = const + sum_window(A * jnp.asarray(spec.offset(p), A.dtype))
            A = spec.linear(p, A)
        else:
            raise ValueError(f"cannot carry a window back through {spec}; use the dense back-substitution")
    return A, const, window


def concretize_windows(
    A: jax.Array,
    const: jax.Array,
    h: jax.Array,
    w: jax.Array,
    window: Window,
    lower: jax.Array,
    upper: jax.Array,
    examples: jax.Array | None = None,
) -> jax.Array:
    """``min over the box = ⟨A, c_win⟩ - ⟨|A|, r_win⟩ + a`` of window rows on the input, shape (B, P, Rp)."""
    centre = gather_windows((upper + lower) / 2, h, w, window, examples)
    radius = gather_windows((upper - lower) / 2, h, w, window, examples)
    return const + sum_window(A * centre - jnp.abs(A) * radius)


def backsubstitute_windows(
    arch: Arch,
    params: LayerParams,
    A: jax.Array,
    const: jax.Array,
    h: jax.Array,
    w: jax.Array,
    lines: Mapping[int, ReluLines],
    lower: jax.Array,
    upper: jax.Array,
    window: Window = Window(),
    local_lines: Callable[[int, Callable[[jax.Array], jax.Array]], Sequence[jax.Array]] | None = None,
    examples: jax.Array | None = None,
) -> jax.Array:
    """Lower bounds (B, P, Rp) of rows given as windows ``A`` (B' ∈ {1, B}, P, Rp, K, K, C) on the output of
    ``arch``, the ``Rp`` rows of position ``p`` at grid position ``h[:, p]``, ``w[:, p]`` (B', P), with
    constants ``const`` (B', P, Rp); see the module doc.

    ``arch`` must satisfy :func:`supports_windows`; ``lines[i]`` relaxes the ReLU at index ``i``, gathered
    on each row's window. ``local_lines(i, gather)``, if given, returns the windowed lines of activation
    ``i`` instead (``gather`` maps a (B, *layer) array onto the current windows), e.g. with per-row slopes
    (:mod:`jaxcert.bounds.start_node_pass`). ``examples`` (B', P): position ``p`` belongs to example
    ``examples[:, p]`` of the box and the lines (rows of (example, neuron) pairs; the result is (B', P, Rp)).
    """
    A, const, window = carry_windows(
        arch, params, A, const, h, w, lines, lower.shape[1:], window, local_lines, examples
    )  # fmt: skip
    return concretize_windows(A, const, h, w, window, lower, upper, examples)
