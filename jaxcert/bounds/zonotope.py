"""Hybrid zonotopes ``{c + Σ_e G_e ε_e + r ⊙ δ : ε ∈ [-1, 1]^E, δ ∈ [-1, 1]^shape}``, shared by DeepZ and hBox.

A batch of hybrid zonotopes is a centre ``c`` (B, *shape), generators ``G`` (B, E, *shape) (one row per
error term) and a box part ``r ≥ 0`` (B, *shape): one independent error term per coordinate, i.e. the
diagonal generators ``diag(r)`` stored compactly. Its interval hull is ``c ∓ (Σ_e |G_e| + r)``.

Affine layers ``x -> A x + b`` map the centre and the generators exactly, ``c' = A c + b`` and
``G'_e = A G_e``. The box part has two rules:

* **lift** (exact): the diagonal generators become ordinary ones, ``diag(r) -> A diag(r) = r ⊙ A(I)``
  (``A(I)``: the layer's linear part applied to every unit vector, computed once for the whole batch);
* **box** (interval arithmetic, correlations dropped): ``r' = |A| r``.

For a diagonal layer (per-coordinate scaling or a reshape: :data:`DIAGONAL_LAYERS`) ``A diag(r)`` is again
diagonal, so ``r' = |A| r`` is exact and no lift is needed. DeepZ lifts at every other affine layer
(its new error terms stay correlated); hBox lifts only the input box (its input error terms). An ``Add``
merge sums two zonotopes (:func:`add`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcert.nets.layers import BatchNorm, Dense, Flatten, LayerSpec, Normalize, Params

#: Affine layers whose linear part maps each coordinate to one coordinate (so boxes stay exact boxes).
DIAGONAL_LAYERS = (Normalize, BatchNorm, Flatten)


class HybridZonotope(NamedTuple):
    """Centre (B, *shape), generators (B, E, *shape) and box part (B, *shape), see the module docstring."""

    centre: jax.Array
    generators: jax.Array
    box: jax.Array


def from_box(lower: jax.Array, upper: jax.Array) -> HybridZonotope:
    """The box ``[lower, upper]`` as ``c = (u + l)/2``, no generators (E = 0), ``r = (u - l)/2``."""
    batch, shape = lower.shape[0], lower.shape[1:]
    generators = jnp.zeros((batch, 0, *shape), lower.dtype)
    return HybridZonotope((upper + lower) / 2, generators, (upper - lower) / 2)


def is_diagonal(spec: LayerSpec) -> bool:
    return isinstance(spec, DIAGONAL_LAYERS)


def map_rows(fn, rows: jax.Array) -> jax.Array:  # type: ignore[no-untyped-def]
    """Apply a batched map ``fn`` (B', *in) -> (B', *out) to every row of ``rows`` (B, E, *in) by merging
    the row axis into the batch axis; returns (B, E, *out)."""
    batch, num = rows.shape[:2]
    if num == 0:
        out_shape = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *rows.shape[2:]), rows.dtype)).shape[1:]
        return jnp.zeros((batch, 0, *out_shape), rows.dtype)
    out = fn(rows.reshape(batch * num, *rows.shape[2:]))
    return out.reshape(batch, num, *out.shape[1:])


def unit_responses(spec: LayerSpec, p: Params, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """``A(I)``: the linear part of ``spec`` applied to each unit vector of an input of ``shape``,
    shape (N, *out) with N = prod(shape). For Dense this is the kernel itself."""
    if isinstance(spec, Dense):
        return p["kernel"]
    n = math.prod(shape)
    return spec.linear(p, jnp.eye(n, dtype=dtype).reshape(n, *shape))


def lift_box(spec: LayerSpec, p: Params, box: jax.Array) -> jax.Array:
    """Generators ``A diag(r) = r ⊙ A(I)`` of the box part after the layer, shape (B, N, *out)."""
    batch = box.shape[0]
    responses = unit_responses(spec, p, box.shape[1:], box.dtype)
    scale = box.reshape(batch, -1).reshape(batch, -1, *([1] * (responses.ndim - 1)))
    return scale * responses[None]


def lift_identity(z: HybridZonotope) -> HybridZonotope:
    """The same set with the box part turned into generators ``diag(r)`` (appended to ``G``), ``r = 0``."""
    batch, shape = z.box.shape[0], z.box.shape[1:]
    flat = z.box.reshape(batch, -1)
    diag = (jnp.eye(flat.shape[1], dtype=flat.dtype)[None] * flat[:, :, None]).reshape(batch, -1, *shape)
    return HybridZonotope(z.centre, jnp.concatenate([z.generators, diag], axis=1), jnp.zeros_like(z.box))


def affine(spec: LayerSpec, p: Params, z: HybridZonotope, *, lift: bool) -> HybridZonotope:
    """Image of ``z`` under the affine layer ``spec``; the box part is lifted into generators if ``lift``
    and the layer is not diagonal, otherwise propagated as ``r' = |A| r``."""
    centre = spec.apply(p, z.centre)
    generators = map_rows(lambda g: spec.linear(p, g), z.generators)
    if lift and not is_diagonal(spec):
        lifted = lift_box(spec, p, z.box)
        return HybridZonotope(centre, jnp.concatenate([generators, lifted], axis=1), jnp.zeros_like(centre))
    return HybridZonotope(centre, generators, spec.abs_linear(p, z.box))


def add(a: HybridZonotope, b: HybridZonotope) -> HybridZonotope:
    """``a + b`` (an ``Add`` merge): centres and generators add, the box parts add (``|r_a δ_a + r_b δ_b| ≤
    r_a + r_b``: sound, correlations between the two box parts dropped).

    Error terms are only ever appended along a path (a lift or a new term goes to the end), so the terms of
    the earlier node ``b`` are a prefix of those of ``a``: the shorter list is padded with zero generators."""
    ea, eb = a.generators.shape[1], b.generators.shape[1]
    pad = lambda g, n: jnp.pad(g, [(0, 0), (0, n)] + [(0, 0)] * (g.ndim - 2))
    ga, gb = pad(a.generators, max(0, eb - ea)), pad(b.generators, max(0, ea - eb))
    return HybridZonotope(a.centre + b.centre, ga + gb, a.box + b.box)


def radius(z: HybridZonotope) -> jax.Array:
    """Half-width of the interval hull, ``Σ_e |G_e| + r``."""
    return jnp.sum(jnp.abs(z.generators), axis=1) + z.box


def interval_hull(z: HybridZonotope) -> tuple[jax.Array, jax.Array]:
    """``(c - rad, c + rad)``: the tightest box containing ``z``."""
    rad = radius(z)
    return z.centre - rad, z.centre + rad


def final_bounds(z: HybridZonotope, W: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bounds of ``einsum('bh,bhk->bk', h, W) + b`` over ``h ∈ z`` (the folded spec): centre
    ``c W + b``, radius ``Σ_e |G_e W| + r |W|`` (lifting the box here gives the same radius)."""
    centre = jnp.einsum("bh,bhk->bk", z.centre, W) + b
    rad = jnp.sum(jnp.abs(jnp.einsum("beh,bhk->bek", z.generators, W)), axis=1)
    rad = rad + jnp.einsum("bh,bhk->bk", z.box, jnp.abs(W))
    return centre - rad, centre + rad


def check_box(name: str, lower: jax.Array, upper: jax.Array) -> None:
    """Raise ``ValueError`` if the input box is not a batched pair of arrays of equal shape."""
    if lower.shape != upper.shape:
        raise ValueError(f"{name}: lower {lower.shape} and upper {upper.shape} must have the same shape")
    if lower.ndim < 2:
        raise ValueError(f"{name}: the input box needs a leading batch axis, got shape {lower.shape}")


def check_no_options(name: str, options: dict) -> None:
    if options:
        raise ValueError(f"{name} takes no options, got {sorted(options)}")
