"""Clean, empirical-robust (PGD) and certified accuracy of a network on a data set.

Per example, with ``z = f(x)``:

    clean      argmax z = y
    pgd        clean and argmax f(x_adv) = y,  x_adv = PGD in the ε-ball (ℓ∞ or ℓ2) ∩ input_range
    cert/<r>   every margin lower bound of relaxation r is positive: lb(z_y - z_j) > 0 for all j ≠ y

Certification always bounds the ℓ∞ box of radius ε clipped to ``ds.input_range``; for ``norm="l2"``
that box contains the ℓ2 ball, so the certificate is sound (if loose) there too. A certified example
is correct at every point of the region, hence ``cert ⇒ pgd ⇒ clean`` example by example.

Evaluation is traced at matmul precision ``"highest"``: full float32 products on GPUs and TPUs, which
by default may compute float32 matmuls and convolutions with TF32 or bfloat16 passes (relative errors
~1e-3) and so could certify an example that exact arithmetic would not. Training keeps the default.
(Bounds are float32 and, like auto_LiRPA's, not outward-rounded: sound up to float32 rounding.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.attacks.pgd import check_norm, pgd
from jaxcert.bounds import get_relaxation, is_certified, margin_lower_bounds
from jaxcert.bounds.box import check_eps
from jaxcert.bounds.checks import check_labels
from jaxcert.data.dataset import Dataset
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward


@functools.partial(jax.jit, static_argnames=("arch",))
def _correct(arch: Arch, params: LayerParams, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.argmax(forward(arch, params, x), axis=-1) == y


def _padded_chunks(n: int, batch_size: int):
    """Index arrays of length ``batch_size`` covering ``range(n)`` (the last one padded with index 0,
    so that every batch has the same shape and the jitted function compiles once), and their true sizes."""
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        yield np.concatenate([idx, np.zeros(batch_size - idx.size, dtype=idx.dtype)]), idx.size


def accuracy(arch: Arch, params: LayerParams, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024) -> float:
    """Fraction of examples with ``argmax f(x) = y``."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0:
        raise ValueError("accuracy of an empty data set is undefined")
    check_labels(x, y)
    size = min(batch_size, len(x))
    hits = 0
    for idx, n in _padded_chunks(len(x), size):
        hits += int(np.sum(np.asarray(_correct(arch, params, x[idx], y[idx]))[:n]))
    return hits / len(x)


@functools.partial(jax.jit, static_argnames=("arch", "relaxations", "norm", "steps", "restarts", "lo", "hi"))
def batch_results(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: jax.Array,
    key: jax.Array,
    *,
    relaxations: tuple[str, ...],
    norm: str,
    steps: int,
    restarts: int,
    lo: float,
    hi: float,
) -> dict[str, jax.Array]:
    """Per-example booleans ``clean_acc``, ``pgd_acc``, ``cert_acc/<r>`` for one batch (full-precision matmuls)."""
    with jax.default_matmul_precision("highest"):
        logits_fn = lambda v: forward(arch, params, v)
        clean = jnp.argmax(logits_fn(x), axis=-1) == y
        x_adv = pgd(logits_fn, x, y, eps, key=key, norm=norm, steps=steps, restarts=restarts, lo=lo, hi=hi)
        out = {"clean_acc": clean, "pgd_acc": clean & (jnp.argmax(logits_fn(x_adv), axis=-1) == y)}
        for name in relaxations:
            lb = margin_lower_bounds(arch, params, x, y, eps, relaxation=name, lo=lo, hi=hi)
            out[f"cert_acc/{name}"] = is_certified(lb)
    return out


def evaluate_per_example(
    arch: Arch,
    params: LayerParams,
    ds: Dataset,
    eps: float,
    *,
    relaxations: tuple[str, ...] | list[str] | str = ("ibp",),
    pgd_steps: int = 10,
    pgd_restarts: int = 1,
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    norm: str = "linf",
    part: tuple[int, int] = (0, 1),
) -> dict[str, np.ndarray]:
    """Per-example boolean arrays (keys as in :func:`evaluate`) for the first ``limit`` examples; with
    ``part=(i, P)`` only those of the batches ``b ≡ i (mod P)`` (one of ``P`` processes' share; empty arrays
    when there is no such batch)."""
    relaxations = (relaxations,) if isinstance(relaxations, str) else tuple(relaxations)
    for name in relaxations:
        get_relaxation(name)  # unknown names fail here, with the list of known ones
    check_norm(norm)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_eps(eps)
    if limit is not None:
        ds = ds.take(limit)
    if len(ds) == 0:
        raise ValueError(f"cannot evaluate on an empty data set ({ds.name}, limit={limit})")
    lo, hi = ds.input_range
    size = min(batch_size, len(ds))
    key = jax.random.key(seed)
    eps_arr = jnp.asarray(eps, dtype=jnp.float32)
    index, count = part
    if not 0 <= index < count:
        raise ValueError(f"part must be (i, P) with 0 <= i < P, got {part}")
    keys = ["clean_acc", "pgd_acc", *(f"cert_acc/{name}" for name in relaxations)]
    parts: dict[str, list[np.ndarray]] = {k: [np.zeros(0, bool)] for k in keys}
    for b, (idx, n) in enumerate(_padded_chunks(len(ds), size)):
        if b % count != index:
            continue
        res = batch_results(
            arch,
            params,
            ds.x[idx],
            ds.y[idx],
            eps_arr,
            jax.random.fold_in(key, b),
            relaxations=relaxations,
            norm=norm,
            steps=pgd_steps,
            restarts=pgd_restarts,
            lo=float(lo),
            hi=float(hi),
        )
        for k, v in res.items():
            parts[k].append(np.asarray(v)[:n])
    return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate(
    arch: Arch,
    params: LayerParams,
    ds: Dataset,
    eps: float,
    *,
    relaxations: tuple[str, ...] | list[str] | str = ("ibp",),
    pgd_steps: int = 10,
    pgd_restarts: int = 1,
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    norm: str = "linf",
) -> dict[str, float]:
    """``{"clean_acc", "pgd_acc", "cert_acc/<relaxation>"...}``: fractions over the first ``limit``
    examples of ``ds``, PGD and certification in the ε-region clipped to ``ds.input_range``."""
    per_example = evaluate_per_example(
        arch,
        params,
        ds,
        eps,
        relaxations=relaxations,
        pgd_steps=pgd_steps,
        pgd_restarts=pgd_restarts,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        norm=norm,
    )
    return {k: float(np.mean(v)) for k, v in per_example.items()}
