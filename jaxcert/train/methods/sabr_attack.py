"""SABR's PGD for the centre of the small box (Müller et al., ICLR 2023; eth-sri/SABR ``src/adv_attack.py``).

Over the clipped ε-box ``[L, U]``, with ``n`` steps, the weights held constant and the CE as the loss:

    p_0 ~ U[L, U],      p_{i+1} = clip(p_i + α_i ε sign ∇_p CE(f(p_i), y), L, U),
    α_i = α · 0.1^{#{m ∈ (⌈n/2⌉, ⌈0.8 n⌉, ⌈0.9 n⌉) : i ≥ m}}      (the reference's step decay),

and the attack point is the iterate of largest CE among ``p_0 … p_n`` (per example), a constant of the loss
(``stop_gradient``). The reference's ``α`` is 0.5 (``--adv_step_size``) and ``n`` 8 (``--adv_start_steps``):
steps of ``0.5 ε`` for four steps, ``0.05 ε`` for three and ``0.005 ε`` for the last. (The reference scales
the step by the batch's largest half-width, which is ``ε`` unless every pixel is clipped.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.bounds import cross_entropy

#: The reference's initial step, relative to ε.
SABR_STEP = 0.5


def step_schedule(steps: int, step_rel: float = SABR_STEP) -> np.ndarray:
    """``α_i`` for ``i = 0 … steps - 1`` (module doc): ``step_rel``, ×0.1 at ``⌈n/2⌉``, ``⌈0.8 n⌉``, ``⌈0.9 n⌉``."""
    if steps < 1:
        raise ValueError(f"SABR's PGD needs steps >= 1, got {steps}")
    milestones = [math.ceil(f * steps) for f in (0.5, 0.8, 0.9)]
    return np.array([step_rel * 0.1 ** sum(i >= m for m in milestones) for i in range(steps)], np.float32)


def sabr_pgd(
    logits_fn: Callable[[jax.Array], jax.Array],
    lower: jax.Array,
    upper: jax.Array,
    y: jax.Array,
    eps: jax.Array | float,
    key: jax.Array,
    *,
    steps: int,
    step_rel: float = SABR_STEP,
) -> jax.Array:
    """The iterate of largest CE of SABR's decayed-step PGD in the box ``[lower, upper]`` (module doc), a
    constant (``logits_fn``'s weights stopped by the caller)."""
    sizes = jnp.asarray(step_schedule(steps, step_rel)) * eps
    losses = lambda p: cross_entropy(logits_fn(p), y)
    value_and_grad = jax.value_and_grad(lambda p: (lambda v: (jnp.sum(v), v))(losses(p)), has_aux=True)
    rows = lambda mask: mask.reshape((-1,) + (1,) * (lower.ndim - 1))

    def body(i: int, carry):  # type: ignore[no-untyped-def]
        p, best, best_loss = carry
        (_, loss), grad = value_and_grad(p)
        better = loss > best_loss
        best, best_loss = jnp.where(rows(better), p, best), jnp.where(better, loss, best_loss)
        return jnp.clip(p + sizes[i] * jnp.sign(grad), lower, upper), best, best_loss

    start = lower + jax.random.uniform(key, lower.shape, lower.dtype) * (upper - lower)
    init = (start, start, jnp.full(lower.shape[:1], -jnp.inf, lower.dtype))
    p, best, best_loss = jax.lax.fori_loop(0, steps, body, init)
    best = jnp.where(rows(losses(p) > best_loss), p, best)
    return jax.lax.stop_gradient(best)
