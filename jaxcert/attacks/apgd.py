"""APGD-CE (Croce & Hein, 2020): step-size-free PGD with momentum under ℓ∞, on the cross-entropy loss.

With ``P`` the projection onto the ε-box around ``x`` intersected with ``[lo, hi]``, ``f`` the CE loss
and a per-example step size ``η`` (initially ``2ε``):

    z^(k+1) = P(x^(k) + η sign(∇f(x^(k))))
    x^(k+1) = P(x^(k) + α (z^(k+1) - x^(k)) + (1 - α)(x^(k) - x^(k-1))),   α = 0.75  (x^(1) = z^(1))

At the checkpoints ``w_j ≈ p_j N`` with ``p_0 = 0``, ``p_1 = 0.22``,
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (see :func:`checkpoints`), the step size is halved
and the iterate restarted at the best point so far, example by example, when

    (1) fewer than ρ = 0.75 of the steps since ``w_{j-1}`` increased the loss, or
    (2) η and the best loss are both unchanged since ``w_{j-1}``.

Every iterate of every restart (and the clean point) is a candidate; per example the one with the
smallest margin ``z_y - max_{j≠y} z_j`` is returned (a misclassified point whenever one was found).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.attacks.pgd import classification_margin, project, random_start
from jaxcert.bounds.box import check_eps
from jaxcert.bounds.checks import check_labels
from jaxcert.bounds.loss import cross_entropy
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward

MOMENTUM = 0.75
RHO = 0.75


def checkpoints(n_iter: int) -> list[int]:
    """The iterations ``w_j`` (j ≥ 1, below ``n_iter``) at which the step size may halve, in the integer form
    of the reference implementation: ``w_1 = ⌊0.22 N⌋``, then intervals shrinking by ``⌊0.03 N⌋`` down to
    at least ``⌊0.06 N⌋`` (each at least 1) — i.e. ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    first, shortest, shrink = (max(int(f * n_iter), 1) for f in (0.22, 0.06, 0.03))
    points, length = [first], first
    while True:
        length = max(length - shrink, shortest)
        if points[-1] + length >= n_iter:
            break
        points.append(points[-1] + length)
    return [w for w in points if w < n_iter]


def _schedule(n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration: is it a checkpoint, and the length ``w_j - w_{j-1}`` of the interval it closes."""
    is_ckpt = np.zeros(max(n_iter, 1), bool)
    length = np.ones(max(n_iter, 1), np.float32)
    previous = 0
    for w in checkpoints(n_iter):
        is_ckpt[w], length[w] = True, w - previous
        previous = w
    return is_ckpt, length


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def apgd(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    key: jax.Array,
    steps: int = 100,
    restarts: int = 1,
    lo: float | jax.Array = 0.0,
    hi: float | jax.Array = 1.0,
) -> jax.Array:
    """The worst point (smallest margin) found by APGD-CE in the ℓ∞ ball of radius ``eps`` around ``x``
    within ``[lo, hi]``. Pure and jittable (``steps`` and ``restarts`` static)."""
    if steps < 1 or restarts < 1:
        raise ValueError(f"apgd: steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    check_eps(eps)
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y)
    check_labels(x, y)
    eps_b = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), x.shape[:1])
    is_ckpt, length = (jnp.asarray(a) for a in _schedule(steps))

    def loss_and_grad(v: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        def total(u):  # type: ignore[no-untyped-def]
            logits = logits_fn(u)
            per = cross_entropy(logits, y)
            return jnp.sum(per), (per, logits)

        (_, (per, logits)), grad = jax.value_and_grad(total, has_aux=True)(v)
        return per, logits, grad

    def keep_worse(best_x: jax.Array, best_margin: jax.Array, v: jax.Array, logits: jax.Array):
        margin = classification_margin(logits, y)
        worse = margin < best_margin
        return jnp.where(_bcast(worse, v), v, best_x), jnp.where(worse, margin, best_margin)

    def run(r: int, best: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        eps_x = _bcast(eps_b, x)
        x0 = project(random_start(jax.random.fold_in(key, r), x, eps_x, "linf"), x, eps_x, "linf", lo, hi)
        f0, logits0, g0 = loss_and_grad(x0)
        best = keep_worse(*best, x0, logits0)
        eta = 2.0 * eps_b
        carry = {
            "x": x0, "x_prev": x0, "f": f0, "g": g0, "eta": eta, "x_max": x0, "f_max": f0, "g_max": g0,
            "success": jnp.zeros_like(f0), "eta_ckpt": eta, "fmax_ckpt": f0, "best": best,
        }  # fmt: skip

        def body(k: int, c: dict) -> dict:
            eta_x = _bcast(c["eta"], x)
            z = project(c["x"] + eta_x * jnp.sign(c["g"]), x, eps_x, "linf", lo, hi)
            momentum = jnp.where(k == 0, 1.0, MOMENTUM)
            x_new = project(c["x"] + momentum * (z - c["x"]) + (1 - momentum) * (c["x"] - c["x_prev"]), x, eps_x,
                            "linf", lo, hi)  # fmt: skip
            f_new, logits_new, g_new = loss_and_grad(x_new)
            best = keep_worse(*c["best"], x_new, logits_new)
            success = c["success"] + (f_new > c["f"])
            improved = f_new > c["f_max"]
            x_max = jnp.where(_bcast(improved, x), x_new, c["x_max"])
            g_max = jnp.where(_bcast(improved, x), g_new, c["g_max"])
            f_max = jnp.where(improved, f_new, c["f_max"])
            # checkpoint k + 1: halve η and restart from the best point where progress stalled
            at = is_ckpt[jnp.minimum(k + 1, is_ckpt.size - 1)] & (k + 1 < steps)
            stalled = (success < RHO * length[jnp.minimum(k + 1, is_ckpt.size - 1)]) | (
                (c["eta"] == c["eta_ckpt"]) & (f_max == c["fmax_ckpt"])
            )
            reduce = at & stalled
            r_x = _bcast(reduce, x)
            return {
                "x": jnp.where(r_x, x_max, x_new),
                "x_prev": jnp.where(r_x, x_max, c["x"]),
                "f": jnp.where(reduce, f_max, f_new),
                "g": jnp.where(r_x, g_max, g_new),
                "eta": jnp.where(reduce, c["eta"] / 2, c["eta"]),
                "x_max": x_max, "f_max": f_max, "g_max": g_max,
                "success": jnp.where(at, 0.0, success),
                "eta_ckpt": jnp.where(at, c["eta"], c["eta_ckpt"]),
                "fmax_ckpt": jnp.where(at, f_max, c["fmax_ckpt"]),
                "best": best,
            }  # fmt: skip

        return jax.lax.fori_loop(0, steps, body, carry)["best"]

    best = (x, classification_margin(logits_fn(x), y))
    best_x, _ = jax.lax.fori_loop(0, restarts, run, best)
    return best_x


@functools.partial(jax.jit, static_argnames=("arch", "steps", "restarts"))
def apgd_attack(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    key: jax.Array,
    steps: int = 100,
    restarts: int = 1,
    lo: float | jax.Array = 0.0,
    hi: float | jax.Array = 1.0,
) -> jax.Array:
    """:func:`apgd` against ``forward(arch, params, ·)``, jitted (compiled once per arch, steps, restarts)."""
    return apgd(lambda v: forward(arch, params, v), x, y, eps, key=key, steps=steps, restarts=restarts, lo=lo, hi=hi)
