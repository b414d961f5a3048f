"""Sums over the trailing axes of back-substitution rows, written the way XLA:CPU runs them well.

Rows ``A`` (B, R, *shape) meet per-neuron fields in sums over the neurons,

    s[b, r] = Σ_j A[b, r, j] · o[j]          (a field shared by the batch: a layer's offset ``o``)
    s[b, r] = Σ_j A[b, r, j] · f[b, j]       (one field per example: a relaxation's intercept ``t``,
                                              the input box's centre ``c`` and radius ``r``)

e.g. ``⟨A, o⟩``, ``⟨A⁻, t⟩`` and ``⟨A, c⟩ - ⟨|A|, r⟩``.

* Every sum runs over the neuron axes flattened into one: as ``jnp.sum(A * f, axis=(2, 3, 4))`` XLA:CPU
  ran the multi-axis reduction 6-15× slower on its own (CNN3's CROWN-IBP rows (128, 9, 14, 14, 16):
  23-34 ms against 3-5 ms; at the input box, (128, 9, 28, 28, 1): 12-24 ms against 1 ms); inside the
  whole bound XLA fuses it differently and the difference was within the load's noise.
* Per-example fields are a batched matrix-vector product, ``einsum('brn,bn->br')``: the field is read
  once per example instead of being broadcast over the rows, and its gradient is another product
  (CNN3's CROWN-IBP: bound 0.9-0.95×, train step ≈ 0.9× the CPU time of the product-and-sum;
  RESULTS.md, issue 19, fourth session). A shared offset stays a product and sum (as a product with
  the offset tiled over the positions the bound ran 1.2× slower).

The values are the same sums, summed in another order (equal to float tolerance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sum_after(x: jax.Array, keep: int) -> jax.Array:
    """``Σ`` over every axis of ``x`` after the first ``keep``, as one reduction: shape ``x.shape[:keep]``."""
    return jnp.sum(x.reshape(*x.shape[:keep], -1), axis=-1)


def sum_rows(x: jax.Array) -> jax.Array:
    """``Σ`` over every axis after (batch, row): (B, R, *shape) -> (B, R)."""
    return sum_after(x, 2)


def sum_window(x: jax.Array) -> jax.Array:
    """``Σ`` over the last three axes (a row's ``K × K × C`` window): (…, K, K, C) -> (…)."""
    return sum_after(x, x.ndim - 3)


def rows_dot_each(A: jax.Array, field: jax.Array) -> jax.Array:
    """``s[b, r] = ⟨A[b, r], f[b]⟩`` for rows ``A`` (B, R, *shape) and one field per example ``f``
    (B, *shape): ``einsum('brn,bn->br')``, a batched matrix-vector product -> (B, R). A field with a row
    axis (B, R, *shape), or a batch axis to broadcast, is multiplied and summed instead."""
    field = jnp.asarray(field, A.dtype)
    batch, rows = A.shape[:2]
    if field.shape == (batch, *A.shape[2:]):
        return jnp.einsum("brn,bn->br", A.reshape(batch, rows, -1), field.reshape(batch, -1))
    return sum_rows(A * (field if field.ndim == A.ndim else field[:, None]))
