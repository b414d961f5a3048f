"""Back-substitution engine: linear lower bounds carried backwards through the network (CROWN's pass).

A lower bound of each objective row is kept as coefficients ``A`` on the output ``h_k`` of layer ``k``
plus a constant ``a``,

    objective ≥ ⟨A, h_k⟩ + a,        A: (B, R, *shape_k),  a: (B, R)   (R objective rows per example).

Going back through one layer:

    affine  h_k = L(h_{k-1}) + o :   A ← Lᵀ A,                 a ← a + ⟨A, o⟩
    ReLU    α z ≤ h_k ≤ s z + t  :   A ← A⁺ α + A⁻ s,          a ← a + ⟨A⁻, t⟩

(a positive coefficient takes the lower line, a negative one the upper line), and

    Add     h_k = h_{k-1} + h_j      :   A passes on to h_{k-1} unchanged and is added to the coefficients
                                         on h_j when the walk reaches node j (pending per skip source)

where ``Lᵀ`` is the
transpose of ``spec.linear`` (``jax.linear_transpose``, so Conv, Normalize, BatchNorm and Flatten all
work), applied to the ``B·R`` rows as one batch. At the input box with centre ``c`` and radius ``r``:

    min over the box  =  ⟨A, c⟩ - ⟨|A|, r⟩ + a.

Upper bounds are lower bounds of the negated rows: bound the stacked rows ``[W; -W]`` once.

Cost: one transposed layer application per layer for ``B·R`` rows, memory ``O(B · R · max_k |h_k|)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds.conv_transpose import conv_transpose
from jaxcert.bounds.ibp import interval_step
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.relu_rules import backward_relu  # noqa: F401 (moved there; still importable here)
from jaxcert.bounds.relu_slopes import ReluLines
from jaxcert.bounds.row_sums import rows_dot_each, sum_rows
from jaxcert.nets.graph import plan_for
from jaxcert.nets.layers import Arch, Conv, LayerSpec, Params
from jaxcert.nets.network import LayerParams


def reject_options(unknown: Mapping[str, Any], relaxation: str) -> None:
    """Raise ``ValueError`` naming options that ``relaxation`` does not take."""
    if unknown:
        raise ValueError(f"{relaxation}: unknown option(s) {', '.join(sorted(unknown))}")


def transpose_linear(spec: LayerSpec, p: Params, A: jax.Array, in_shape: tuple[int, ...]) -> jax.Array:
    """``Lᵀ A`` row by row: ``A`` (B, R, *out_shape) -> (B, R, *in_shape) for ``L = spec.linear(p, ·)``."""
    B, R = A.shape[:2]
    rows = A.reshape(B * R, *A.shape[2:])
    if isinstance(spec, Conv):  # same values, a gradient XLA runs fast (see conv_transpose)
        return conv_transpose(spec, p["kernel"], rows, in_shape).reshape(B, R, *in_shape)
    primal = jax.ShapeDtypeStruct((B * R, *in_shape), A.dtype)
    (back,) = jax.linear_transpose(lambda x: spec.linear(p, x), primal)(rows)
    return back.reshape(B, R, *in_shape)


def backward_affine(
    spec: LayerSpec, p: Params, A: jax.Array, const: jax.Array, in_shape: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """``(Lᵀ A, a + ⟨A, o⟩)`` through the affine layer ``h = L(h_prev) + o``."""
    const = const + sum_rows(A * jnp.asarray(spec.offset(p), A.dtype))
    return transpose_linear(spec, p, A, in_shape), const


def concretize(A: jax.Array, const: jax.Array, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """``min_{x ∈ [lower, upper]} ⟨A, x⟩ + a = ⟨A, c⟩ - ⟨|A|, r⟩ + a``, shape (B, R)."""
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    return const + rows_dot_each(A, centre) - rows_dot_each(jnp.abs(A), radius)


def backsubstitute(
    arch: Arch,
    params: LayerParams,
    A: jax.Array,
    const: jax.Array,
    lines: Mapping[int, ReluLines],
    lower: jax.Array,
    upper: jax.Array,
) -> jax.Array:
    """Lower bounds (B, R) of ``⟨A, f(x)⟩ + a`` over the box, ``f`` = ``arch``, ``A`` on its output.

    ``lines[i]`` is the relaxation of the activation layer at index ``i`` of ``arch`` (every one needs one),
    carried back by the "backward" rule of its kind (:mod:`jaxcert.bounds.layer_rules`). At
    ``Add(source=j)`` the coefficients go on unchanged AND are kept as pending for node ``j``, added to
    ``A`` when the walk reaches it (:mod:`jaxcert.nets.graph`).

    The walk stops at node ``k = plan.box_prefix``: the layers below it map the input box onto the box of
    node ``k`` (:func:`box_image`), so concretising there gives the same bound with rows of node ``k``'s
    size (e.g. 196 instead of 784 coordinates after a 2×2 AvgPool) and without the prefix's transposes.
    """
    plan = plan_for(arch, lower.shape[1:])
    stop = plan.box_prefix
    pending: dict[int, jax.Array] = {}
    for i in reversed(range(stop, len(arch))):
        spec, p = arch[i], params[i]
        if spec.is_merge:
            pending[spec.source] = pending[spec.source] + A if spec.source in pending else A
        elif spec.is_affine:
            A, const = backward_affine(spec, p, A, const, plan.shapes[i])
        else:
            A, const = rule_for(spec, "backward", "backsubstitute")(A, const, lines[i])
        if i in pending:  # A is now on node i, which a shortcut also reads
            A = A + pending.pop(i)
    return concretize(A, const, *box_image(arch[:stop], params[:stop], lower, upper))


def box_image(prefix: Arch, params: LayerParams, lower: jax.Array, upper: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The box ``[l_k, u_k]`` of the output of ``prefix`` over the input box, by interval arithmetic
    (centre ``L c + o``, radius ``|L| r`` per layer).

    For layers that map boxes onto boxes (``spec.onto_boxes``) this is the exact image of the input box, not
    only a hull of it: ``min`` of a linear function over the image equals its ``min`` over this box."""
    for spec, p in zip(prefix, params, strict=True):
        if not spec.onto_boxes:
            raise ValueError(f"box_image: {spec} does not map boxes onto boxes")
        lower, upper = interval_step(spec, p, lower, upper, "box_image")
    return lower, upper


def two_sided_rows(W: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rows ``[W; -W]``: from the folded final layer ``W`` (B, h, K), ``b`` (B, K) to ``A`` (B, 2K, h), ``a``."""
    A = jnp.swapaxes(W, 1, 2)
    return jnp.concatenate([A, -A], axis=1), jnp.concatenate([b, -b], axis=1)


def identity_rows(batch: int, shape: tuple[int, ...], dtype: Any) -> tuple[jax.Array, jax.Array]:
    """Rows ``[I; -I]`` for bounding every neuron of a layer of shape ``shape``: (B, 2N, *shape), zeros."""
    n = 1
    for d in shape:
        n *= d
    eye = jnp.eye(n, dtype=dtype).reshape(n, *shape)
    A = jnp.broadcast_to(jnp.concatenate([eye, -eye])[None], (batch, 2 * n, *shape))
    return A, jnp.zeros((batch, 2 * n), dtype)


def neuron_rows(
    arch: Arch, params: LayerParams, index: int, in_shape: tuple[int, ...], batch: int, dtype: Any
) -> tuple[int, jax.Array, jax.Array]:
    """Rows ``[I; -I]`` for the output of layer ``index - 1`` (the input of layer ``index``), carried back
    through the affine layers directly below it, down to the last activation or ``Add`` (or the input).

    These layers are the same for every example, so the rows are built once (a batch of one) and then
    broadcast: this saves a factor ``B`` on the widest transposed layer of each intermediate pass.
    Returns ``(start, A, a)``: continue with :func:`backsubstitute` on ``arch[:start]``.
    """
    layer_shapes = plan_for(arch, in_shape).shapes
    A, a = identity_rows(1, layer_shapes[index], dtype)
    start = index
    while start > 0 and arch[start - 1].is_affine:
        start -= 1
        A, a = backward_affine(arch[start], params[start], A, a, layer_shapes[start])
    return start, jnp.broadcast_to(A, (batch, *A.shape[1:])), jnp.broadcast_to(a, (batch, a.shape[1]))


def split_two_sided(lbs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(lb, ub)`` from the lower bounds of rows ``[W; -W]``: ``lb = first half``, ``ub = -second half``."""
    k = lbs.shape[1] // 2
    return lbs[:, :k], -lbs[:, k:]
