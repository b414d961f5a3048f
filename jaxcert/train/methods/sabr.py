"""SABR (Müller et al., ICLR 2023): certified training on a small adversarial box.

With the clipped ε-box ``[L, U] = [max(x - ε, lo), min(x + ε, hi)]`` (centre ``m``, half-width ``h``) and the
ratio ``λ ∈ (0, 1]``, SABR attacks the whole ε-box and centres a box of radius ``λ h`` at the attack point,
moved just far enough inside for the small box to fit (eth-sri/SABR's ``adv_whitebox``; per-coordinate
radius ``λ h`` as in eth-sri/TAPS's small box, so that the box never leaves the data range):

    x* = SABR's PGD over [L, U] of CE(f_θ(·), y)          (:mod:`.sabr_attack`: 8 steps from 0.5 ε, decayed),
    c  = clip(x*, L + λ h, U - λ h),    B_λ = [c - λ h, c + λ h] ⊆ [L, U],
    R_SABR(θ) = mean CE_cert(lb_θ(B_λ)),

the certified cross-entropy of the margin lower bounds of any registered relaxation over the small box
(IBP in the paper). ``λ = 1`` gives ``c = m`` and ``B_1 = [L, U]`` exactly: plain certified training with that
relaxation.
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
from jaxcert.train.methods.objective import RobustTerm
from jaxcert.train.methods.sabr_attack import SABR_STEP, sabr_pgd


def check_lambda(lam: float) -> None:
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"SABR's lambda must be in (0, 1], got {lam}")


def centred_box(lower: jax.Array, upper: jax.Array, point: jax.Array, lam: float) -> tuple[jax.Array, jax.Array]:
    """``[c - λh, c + λh]`` with ``c = clip(point, L + λh, U - λh)`` and ``h = (U - L)/2``, clipped to
    ``[L, U]`` (only rounding can leave it)."""
    radius = lam * (upper - lower) / 2
    centre = jnp.clip(point, lower + radius, upper - radius)
    return jnp.clip(centre - radius, lower, upper), jnp.clip(centre + radius, lower, upper)


def sabr_region(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    eps: jax.Array | float,
    lam: float,
    key: jax.Array,
    *,
    steps: int,
    step_rel: float = SABR_STEP,
    lo: float = 0.0,
    hi: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """The small box ``B_λ`` of SABR around the PGD point (``logits_fn``'s weights stopped by the caller)."""
    check_lambda(lam)
    lower, upper = input_box(x, eps, lo, hi)
    point = sabr_pgd(logits_fn, lower, upper, y, eps, key, steps=steps, step_rel=step_rel)
    return centred_box(lower, upper, point, lam)


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
    arch: Arch,
    relaxation: str,
    lam: float,
    *,
    attack_steps: int,
    step_rel: float = SABR_STEP,
    lo: float = 0.0,
    hi: float = 1.0,
    **options: Any,
) -> RobustTerm:
    """``R_SABR`` (module doc); logs ``sabr_loss`` and ``sabr_acc`` (fraction of certified small boxes)."""
    get_relaxation(relaxation)
    check_lambda(lam)

    def term(params, x, y, values, key):  # type: ignore[no-untyped-def]
        stopped = jax.lax.stop_gradient(params)
        lower, upper = sabr_region(
            lambda z: forward(arch, stopped, z), x, y, values["eps"], lam, key, steps=attack_steps, step_rel=step_rel,
            lo=lo, hi=hi,
        )  # fmt: skip
        opts = {**options, "beta": values["beta"]} if is_beta_mixable(relaxation) else options
        lb = box_margin_lower_bounds(arch, params, lower, upper, y, relaxation=relaxation, **opts)
        loss = jnp.mean(certified_cross_entropy(lb))
        aux = {"sabr_loss": loss, "sabr_acc": jnp.mean(is_certified(lb).astype(jnp.float32))}
        return loss, {**aux, "beta": opts["beta"]} if "beta" in opts else aux

    return term
