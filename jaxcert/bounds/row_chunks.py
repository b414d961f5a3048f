"""Back-substituting many rows a chunk at a time: memory bounded by a byte budget, not by the row count.

The rows of a back-substitution are independent, so

    bounds(rows) = concat_j bounds(rows_j)        (rows split into chunks along axis 1),

evaluated with ``lax.map`` over the chunks inside the same jitted program: the peak memory of the pass
shrinks by the number of chunks, the arithmetic stays the same. CROWN's intermediate passes use it when
``B · rows · (elements per row) · 4 bytes`` would exceed ``max_rows_bytes`` (e.g. CNN7, whose early
layers have tens of thousands of neurons).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

#: Default memory budget of one chunk of rows (arrays of the pass counted ``ARRAYS_PER_ROW`` times).
MAX_ROWS_BYTES = 2**31
ARRAYS_PER_ROW = 4


def check_max_rows_bytes(max_rows_bytes: int) -> None:
    if isinstance(max_rows_bytes, bool) or not isinstance(max_rows_bytes, int) or max_rows_bytes < 1:
        raise ValueError(f"max_rows_bytes must be a positive int (bytes), got {max_rows_bytes!r}")


def rows_per_chunk(rows: int, bytes_per_row: int, max_rows_bytes: int) -> int:
    """How many rows fit in ``max_rows_bytes`` (at least 1, at most ``rows``)."""
    return max(1, min(rows, max_rows_bytes // max(1, ARRAYS_PER_ROW * bytes_per_row)))


def map_row_chunks(fn: Callable[..., jax.Array], arrays: Sequence[jax.Array], chunk: int) -> jax.Array:
    """``fn(*arrays)`` (rows along axis 1 of every array, result (B, rows, ...)) computed ``chunk`` rows at
    a time with ``lax.map``; the rows are zero-padded to a multiple of ``chunk`` and the padding dropped."""
    rows = arrays[0].shape[1]
    if chunk >= rows:
        return fn(*arrays)
    n = -(-rows // chunk)
    pad = n * chunk - rows
    chunks = [
        jnp.moveaxis(
            jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)).reshape(a.shape[0], n, chunk, *a.shape[2:]), 1, 0
        )
        for a in arrays
    ]
    out = jax.lax.map(lambda xs: fn(*xs), chunks)  # (n, B, chunk, ...)
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape(out.shape[0], n * chunk, *out.shape[3:])[:, :rows]
