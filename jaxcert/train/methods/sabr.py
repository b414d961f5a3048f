"""SABR (Müller et al., ICLR 2023): certified training on a small adversarial box.

With the clipped ε-box ``[L, U] = [max(x - ε, lo), min(x + ε, hi)]`` (centre ``m``, half-width ``h``) and the
ratio ``λ ∈ (0, 1]``, the small box is the image of ``[L, U]`` under the homothety of ratio ``λ`` about a
point ``q ∈ [L, U]``:

    B_λ(q) = [λ L + (1 - λ) q,  λ U + (1 - λ) q],   centre c(q) = λ m + (1 - λ) q,   radius λ h.

As ``q`` ranges over ``[L, U]`` the centre ranges over ``[m - (1 - λ) h, m + (1 - λ) h]``, the ε-box shrunk
so that the small box fits: ``B_λ(q) ⊆ [L, U]`` always (inside the ε-box and the data range; near the data
range the radius shrinks with ``h``, per coordinate, as in the reference code). SABR picks the centre by PGD,

    q* = PGD over q ∈ [L, U] of CE(f_θ(c(q)), y)        (step 0.5 ε in q, i.e. 0.5 (1 - λ) ε for the centre),
    R_SABR(θ) = mean CE_cert(lb_θ(B_λ(q*))),

the certified cross-entropy of the margin lower bounds of any registered relaxation over the small box
(IBP in the paper). ``λ = 1`` gives ``B_1 = [L, U]`` exactly: plain certified training with that relaxation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds import certified_cross_entropy, get_relaxation, input_box, is_certified
from jaxcert.bounds.registry import is_beta_mixable, is_one_sided
from jaxcert.bounds.spec import batch_margin_spec
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward
from jaxcert.train.methods.inner_attack import inner_pgd
from jaxcert.train.methods.objective import RobustTerm

#: PGD step of the centre search, relative to ε (the reference code's 0.5, without its step decay).
SABR_STEP = 0.5


def check_lambda(lam: float) -> None:
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"SABR's lambda must be in (0, 1], got {lam}")


def small_box(lower: jax.Array, upper: jax.Array, q: jax.Array, lam: float) -> tuple[jax.Array, jax.Array]:
    """``B_λ(q) = λ [L, U] + (1 - λ) q``, clipped to ``[L, U]`` (only rounding can leave it)."""
    lo = jnp.clip(lam * lower + (1.0 - lam) * q, lower, upper)
    hi = jnp.clip(lam * upper + (1.0 - lam) * q, lower, upper)
    return lo, hi


def sabr_region(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    eps: jax.Array | float,
    lam: float,
    key: jax.Array,
    *,
    steps: int,
    lo: float = 0.0,
    hi: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """The small box ``B_λ(q*)`` of SABR around the PGD centre (``logits_fn``'s weights stopped by the caller)."""
    check_lambda(lam)
    lower, upper = input_box(x, eps, lo, hi)
    mid = (lower + upper) / 2
    centre_logits = lambda q: logits_fn(lam * mid + (1.0 - lam) * q)
    q = inner_pgd(centre_logits, x, y, eps, key, steps=steps, step_size=SABR_STEP * eps, lo=lo, hi=hi)
    return small_box(lower, upper, q, lam)


def box_margin_lower_bounds(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    y: jax.Array,
    *,
    relaxation: str = "ibp",
    **options: Any,
) -> jax.Array:
    """Lower bounds of the margins ``z_y - z_j`` (j ≠ y) over the box ``[lower, upper]``, shape (B, n-1):
    :func:`jaxcert.bounds.margin_lower_bounds` for a given box instead of an ε-ball."""
    C = batch_margin_spec(arch, params, lower, y)
    if is_one_sided(relaxation):
        options = {"bound_upper": False, **options}
    return get_relaxation(relaxation)(arch, params, lower, upper, C, **options)[0]


def sabr_term(
    arch: Arch, relaxation: str, lam: float, *, steps: int, lo: float = 0.0, hi: float = 1.0, **options: Any
) -> RobustTerm:
    """``R_SABR`` (module doc); logs ``sabr_loss`` and ``sabr_acc`` (fraction of certified small boxes)."""
    get_relaxation(relaxation)
    check_lambda(lam)

    def term(params, x, y, values, key):  # type: ignore[no-untyped-def]
        stopped = jax.lax.stop_gradient(params)
        lower, upper = sabr_region(
            lambda z: forward(arch, stopped, z), x, y, values["eps"], lam, key, steps=steps, lo=lo, hi=hi
        )
        opts = {**options, "beta": values["beta"]} if is_beta_mixable(relaxation) else options
        lb = box_margin_lower_bounds(arch, params, lower, upper, y, relaxation=relaxation, **opts)
        loss = jnp.mean(certified_cross_entropy(lb))
        aux = {"sabr_loss": loss, "sabr_acc": jnp.mean(is_certified(lb).astype(jnp.float32))}
        return loss, {**aux, "beta": opts["beta"]} if "beta" in opts else aux

    return term
