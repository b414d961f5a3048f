"""Expressive losses (De Palma et al., ICLR 2024): MTL-IBP, CC-IBP and EXP-IBP.

With ``x*`` the PGD point in the clipped ε-box (step ``0.25 ε``, the reference's relative step), the
adversarial loss ``L_adv = mean CE(f_θ(x*), y)``, the margin lower bounds ``lb`` of the relaxation over the
ε-box (IBP in the paper) and ``L_ver = mean CE_cert(lb)``, for ``α ∈ [0, 1]``:

    MTL-IBP:  R = (1 - α) L_adv + α L_ver,
    CC-IBP:   R = mean CE_cert((1 - α) d(x*) + α lb),    d_j(x*) = f_θ(x*)_y - f_θ(x*)_j (j ≠ y),
    EXP-IBP:  R = L_adv^(1 - α) · L_ver^α                 (batch means, as the reference computes it).

``CE_cert(v) = log(1 + Σ_j exp(-v_j))``, so ``CE_cert(d(x*)) = CE(f_θ(x*), y)``: CC-IBP takes the cross-entropy
of the convex combination of the adversarial logit differences and the verified ones. All three are the PGD
loss at ``α = 0`` and the verified loss at ``α = 1``; EXP-IBP's powers use ``max(L, tiny)`` so that a loss
that underflows to 0 gives a zero gradient, not ``0 · ∞``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds import certified_cross_entropy, cross_entropy, get_relaxation, is_certified, margin_lower_bounds
from jaxcert.bounds.registry import is_beta_mixable
from jaxcert.bounds.spec import batch_margin_spec
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import forward
from jaxcert.train.losses import batch_accuracy
from jaxcert.train.methods.inner_attack import inner_pgd
from jaxcert.train.methods.objective import RobustTerm

#: PGD step inside the loss, relative to ε (the reference's CIFAR-10 setting: 8 steps of 0.25 ε).
EXPRESSIVE_STEP = 0.25
EXPRESSIVE_LOSSES = ("mtl-ibp", "cc-ibp", "exp-ibp")
_TINY = float(jnp.finfo(jnp.float32).tiny)


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the expressive losses' alpha must be in [0, 1], got {alpha}")


def mtl_loss(adv: jax.Array, ver: jax.Array, alpha: float) -> jax.Array:
    """``(1 - α) L_adv + α L_ver``."""
    return (1.0 - alpha) * adv + alpha * ver


def exp_loss(adv: jax.Array, ver: jax.Array, alpha: float) -> jax.Array:
    """``L_adv^(1 - α) · L_ver^α`` (each base at least the smallest normal float)."""
    return jnp.maximum(adv, _TINY) ** (1.0 - alpha) * jnp.maximum(ver, _TINY) ** alpha


def cc_margins(adv_margins: jax.Array, lb: jax.Array, alpha: float) -> jax.Array:
    """``(1 - α) d(x*) + α lb``, the margins whose certified cross-entropy CC-IBP minimises."""
    return (1.0 - alpha) * adv_margins + alpha * lb


def expressive_term(
    kind: str,
    arch: Arch,
    relaxation: str,
    alpha: float,
    *,
    attack_steps: int,
    step_rel: float = EXPRESSIVE_STEP,
    lo: float = 0.0,
    hi: float = 1.0,
    **options: Any,
) -> RobustTerm:
    """The robust term ``R`` of ``kind`` (``mtl-ibp``, ``cc-ibp`` or ``exp-ibp``); logs ``adv_loss``,
    ``adv_acc``, ``cert_loss`` and ``cert_acc`` (the verified loss and accuracy over the ε-box); the PGD takes
    ``attack_steps`` sign steps of ``step_rel · ε`` (the reference's MNIST and CIFAR-10 8/255 recipes: one step of
    ``10 ε``, i.e. the sign corner of the box from the random start; CIFAR-10 2/255: 8 steps of ``0.25 ε``)."""
    if kind not in EXPRESSIVE_LOSSES:
        raise ValueError(f"unknown expressive loss {kind!r}; known: {', '.join(EXPRESSIVE_LOSSES)}")
    get_relaxation(relaxation)
    check_alpha(alpha)

    def term(params, x, y, values, key):  # type: ignore[no-untyped-def]
        eps = values["eps"]
        stopped = jax.lax.stop_gradient(params)
        x_adv = inner_pgd(
            lambda z: forward(arch, stopped, z), x, y, eps, key, steps=attack_steps, step_size=step_rel * eps,
            lo=lo, hi=hi,
        )  # fmt: skip
        logits_adv = forward(arch, params, x_adv)
        opts = {**options, "beta": values["beta"]} if is_beta_mixable(relaxation) else options
        lb = margin_lower_bounds(arch, params, x, y, eps, relaxation=relaxation, lo=lo, hi=hi, **opts)
        adv, ver = jnp.mean(cross_entropy(logits_adv, y)), jnp.mean(certified_cross_entropy(lb))
        if kind == "mtl-ibp":
            loss = mtl_loss(adv, ver, alpha)
        elif kind == "exp-ibp":
            loss = exp_loss(adv, ver, alpha)
        else:
            C = batch_margin_spec(arch, params, x, y)
            adv_margins = jnp.einsum("bkn,bn->bk", C, logits_adv)
            loss = jnp.mean(certified_cross_entropy(cc_margins(adv_margins, lb, alpha)))
        aux = {"adv_loss": adv, "adv_acc": batch_accuracy(logits_adv, y), "cert_loss": ver}
        aux |= {"cert_acc": jnp.mean(is_certified(lb).astype(jnp.float32))}
        return loss, {**aux, "beta": opts["beta"]} if "beta" in opts else aux

    return term
