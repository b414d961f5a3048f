"""Specifications: linear functions ``C f(x)`` of the logits whose bounds we want.

For certification of label ``y`` the margins are ``m_j = z_y - z_j`` (j ≠ y), i.e. ``C`` has rows
``e_y - e_j``, shape (B, n-1, n). ``fold_spec`` folds ``C`` into the last Dense layer,

    C (W h + b) = (C W) h + C b,

so that relaxations bound the margins directly (tighter than bounding logits and subtracting).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcert.bounds.checks import check_labels
from jaxcert.nets.layers import Arch, Dense
from jaxcert.nets.network import LayerParams


def margin_spec(y: jax.Array, num_classes: int) -> jax.Array:
    """C of shape (B, n-1, n) with rows ``e_y - e_j`` for every ``j ≠ y``."""
    y = jnp.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (batch,), got {y.shape}")
    eye = jnp.eye(num_classes, dtype=jnp.float32)  # entries 0, ±1 (exact): float32 keeps the weights' dtype under x64
    # others[b, i] = i-th class different from y[b]
    idx = jnp.arange(num_classes - 1)[None, :]
    others = idx + (idx >= y[:, None])
    return eye[y][:, None, :] - eye[others]


def num_outputs(arch: Arch, params: LayerParams) -> int:
    last = arch[-1]
    if isinstance(last, Dense):
        return last.features
    raise ValueError("the network must end with a Dense layer")


def batch_margin_spec(arch: Arch, params: LayerParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """:func:`margin_spec` of ``y`` for the outputs of ``arch``, after checking that ``y`` labels every
    example of the batch ``x``; shape (B, n-1, n)."""
    check_labels(x, y)
    return margin_spec(y, num_outputs(arch, params))


def fold_spec(
    arch: Arch, params: LayerParams, C: jax.Array | None, batch: int
) -> tuple[Arch, LayerParams, jax.Array, jax.Array]:
    """Split the network into a body and a per-example final affine map.

    Returns ``(body_arch, body_params, W, b)`` with ``W`` of shape (B, h, K) and ``b`` of shape (B, K)
    such that ``C f(x) = einsum('bh,bhk->bk', body(x), W) + b``. ``C=None`` means the identity
    (bounds on the logits themselves).
    """
    last, p = arch[-1], params[-1]
    if not isinstance(last, Dense):
        raise ValueError(f"the network must end with a Dense layer, got {last}")
    kernel, bias = p["kernel"], p["bias"]
    if C is None:
        W = jnp.broadcast_to(kernel, (batch, *kernel.shape))
        b = jnp.broadcast_to(bias, (batch, bias.shape[0]))
    else:
        if C.ndim != 3 or C.shape[0] != batch or C.shape[2] != kernel.shape[1]:
            raise ValueError(f"C must have shape (batch={batch}, K, outputs={kernel.shape[1]}), got {C.shape}")
        # (B·K, n) @ (n, h): rows first, so that the kernel's gradient Cᵀ (∂rows) reads ∂rows in its own
        # order (einsum "hn,bkn->bhk" made XLA:CPU copy ∂rows transposed, 10 % of CROWN-IBP's train step)
        rows = (C.reshape(-1, C.shape[2]) @ kernel.T).reshape(batch, C.shape[1], kernel.shape[0])
        W = jnp.swapaxes(rows, 1, 2)
        b = jnp.einsum("n,bkn->bk", bias, C)
    return arch[:-1], params[:-1], W, b
