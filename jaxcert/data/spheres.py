"""Concentric spheres (De Bartolomeis et al., 2023): class 0 on the sphere of radius ``r_inner``,
class 1 on the sphere of radius ``r_outer``, points uniform on each sphere,

    x = r · z / ‖z‖₂,   z ~ N(0, I_d).

The ℓ2 distance between the classes is ``r_outer - r_inner``, so the data margin (the largest ℓ2 radius
within which a perfect classifier exists) is ``(r_outer - r_inner) / 2``.
"""

from __future__ import annotations

import numpy as np

from jaxcert.data.dataset import Dataset


def spheres_margin(r_inner: float, r_outer: float) -> float:
    """The ℓ2 data margin ``(r_outer - r_inner) / 2``."""
    return (r_outer - r_inner) / 2


def concentric_spheres(n: int, dim: int = 10, r_inner: float = 1.0, r_outer: float = 1.3, *, seed: int = 0) -> Dataset:
    """``n`` points (⌈n/2⌉ inner, ⌊n/2⌋ outer) in random order; inputs unbounded, no normalisation."""
    if n < 2:
        raise ValueError(f"concentric_spheres: n must be >= 2 (one point per class), got {n}")
    if dim < 1:
        raise ValueError(f"concentric_spheres: dim must be >= 1, got {dim}")
    if not 0 < r_inner < r_outer:
        raise ValueError(f"concentric_spheres: need 0 < r_inner < r_outer, got r_inner={r_inner}, r_outer={r_outer}")
    rng = np.random.default_rng(seed)
    y = (np.arange(n) >= (n + 1) // 2).astype(np.int32)
    rng.shuffle(y)
    z = rng.standard_normal((n, dim))
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    radii = np.where(y == 0, r_inner, r_outer)[:, None]
    x = (radii * z / norms).astype(np.float32)
    return Dataset(x=x, y=y, num_classes=2, name="spheres", input_range=(-np.inf, np.inf), normalization="none")
