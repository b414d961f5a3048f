"""Training objectives: the mixed clean/certified loss of the certified-training recipe.

    L(θ) = κ · CE(f_θ(x), y) + (1 - κ) · CE_cert(lb_θ(x, ε), y) + λ · Σ |W|,

where ``CE_cert`` is the certified cross-entropy of the margin lower bounds ``lb`` from the chosen
relaxation (:func:`jaxcert.bounds.certified_cross_entropy`) and the L1 term sums the absolute values of
all trainable kernels. ε, κ and (for CROWN-IBP) β come from a :class:`RecipeSchedule` at the current step.

An *objective* is the pure function ``(trainable, frozen, x, y, step) -> (loss, aux)`` shared by the
certified, RGS and PGPE trainers; ``frozen`` holds the BatchNorm running statistics. With
``bn_mode="batch"`` the forward pass and the bounds use the clean batch's BatchNorm statistics instead
(:func:`jaxcert.train.batch_norm.with_batch_stats`). With ``reg_weight`` λ > 0 the certified objective adds
Shi et al.'s warm-up regularisers during the ε ramp (:mod:`jaxcert.train.warmup_regularisers`):

    L(θ) += λ (1 - ε_t / ε_final) · (L_tight + L_relu)     while 0 < ε_t < ε_final.

With ``loss_fusion=True`` (CROWN-IBP only) ``CE_cert`` is the fused bound of the certified cross-entropy,
one back-substituted row per example instead of one per margin (:mod:`jaxcert.bounds.loss_fusion`); the
batch's ``cert_acc`` is then IBP's (the fused bound has no margins).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcert.bounds import certified_cross_entropy, cross_entropy, get_relaxation, is_certified, margin_lower_bounds
from jaxcert.bounds.loss_fusion import fused_certified_loss
from jaxcert.bounds.registry import is_beta_mixable, is_fusable, relaxations_with
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward, merge
from jaxcert.train.batch_norm import check_bn_mode, with_batch_stats
from jaxcert.train.schedules import RecipeSchedule
from jaxcert.train.warmup_regularisers import add_warmup, check_warmup

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def check_loss_fusion(loss_fusion: bool, relaxation: str) -> None:
    """``ValueError`` unless loss fusion is off or ``relaxation`` has a fused certified loss (its trait
    ``fusable``, :func:`jaxcert.bounds.registry.is_fusable`)."""
    if loss_fusion and not is_fusable(relaxation):
        raise ValueError(
            f"loss_fusion bounds the certified loss with CROWN-IBP's back-substitution: it needs relaxation "
            f"{' or '.join(sorted(relaxations_with('fusable')))}, got {relaxation!r}"
        )


def l1_penalty(trainable: LayerParams) -> jax.Array:
    """``Σ |W|`` over every trainable kernel (biases and BatchNorm affine terms excluded)."""
    return sum((jnp.sum(jnp.abs(p["kernel"])) for p in trainable if "kernel" in p), jnp.zeros(()))


def mixed_loss(
    kappa: float | jax.Array, clean: jax.Array, robust: jax.Array, l1: float, trainable: LayerParams
) -> jax.Array:
    """``κ · clean + (1 - κ) · robust``, plus ``λ Σ|W|`` (:func:`l1_penalty`) when ``l1`` is non-zero."""
    loss = kappa * clean + (1.0 - kappa) * robust
    if l1:
        loss = loss + l1 * l1_penalty(trainable)
    return loss


def batch_accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction (float32) of the rows of ``logits`` whose argmax is the label ``y``."""
    return jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))


def clean_objective(arch: Arch, *, l1: float = 0.0, bn_mode: str = "eval") -> Objective:
    """Standard training: ``CE(f_θ(x), y) + λ Σ|W|`` (BatchNorm statistics by ``bn_mode``)."""
    check_bn_mode(bn_mode)

    def objective(trainable, frozen, x, y, step):  # type: ignore[no-untyped-def]
        del step
        logits = forward(arch, merge(trainable, frozen), x)
        ce = jnp.mean(cross_entropy(logits, y))
        loss = ce + l1 * l1_penalty(trainable) if l1 else ce
        return loss, {"clean_loss": ce, "clean_acc": jnp.mean(jnp.argmax(logits, -1) == y)}

    return with_batch_stats(arch, objective) if bn_mode == "batch" else objective


def certified_objective(
    arch: Arch,
    relaxation: str,
    schedule: RecipeSchedule,
    *,
    l1: float = 0.0,
    lo: float = 0.0,
    hi: float = 1.0,
    bn_mode: str = "eval",
    reg_weight: float = 0.0,
    reg_tol: float = 0.5,
    loss_fusion: bool = False,
    **options: Any,
) -> Objective:
    """The mixed objective ``κ CE + (1-κ) CE_cert + λ Σ|W|`` with ε, κ, β from ``schedule(step)``.

    ``loss_fusion=True`` (``crown-ibp`` only): ``CE_cert`` is the fused bound (see the module doc).
    ``bn_mode="batch"``: the clean batch's BatchNorm statistics in the forward pass and the bounds.
    ``reg_weight > 0``: plus the warm-up regularisers with tolerance ``reg_tol`` (needs ``schedule.eps_final``),
    logged as ``reg_tightness``, ``reg_relu``, ``tightness`` and ``reg_weight`` (the scheduled weight).

    The bounds are computed even while κ = 1 (clean warm-up): skipping them with ``lax.cond`` on the
    traced κ makes XLA:CPU run the convolutions inside the conditional 4-5x slower than the bounds cost.
    """
    get_relaxation(relaxation)  # unknown name -> ValueError now, not at trace time
    check_bn_mode(bn_mode)
    check_loss_fusion(loss_fusion, relaxation)
    check_warmup(reg_weight, reg_tol, schedule.eps_final)

    def objective(trainable, frozen, x, y, step):  # type: ignore[no-untyped-def]
        params = merge(trainable, frozen)
        values = schedule(step)
        eps, kappa = values["eps"], values["kappa"]
        logits = forward(arch, params, x)
        ce = jnp.mean(cross_entropy(logits, y))
        opts = dict(options)
        if is_beta_mixable(relaxation):
            opts["beta"] = values["beta"]
        else:
            values.pop("beta")
        if loss_fusion:
            cert_loss, lb = fused_certified_loss(arch, params, x, y, eps, lo=lo, hi=hi, **opts)
        else:
            lb = margin_lower_bounds(arch, params, x, y, eps, relaxation=relaxation, lo=lo, hi=hi, **opts)
            cert_loss = certified_cross_entropy(lb)
        cert_ce = jnp.mean(cert_loss)
        cert_acc = jnp.mean(is_certified(lb).astype(jnp.float32))
        loss = mixed_loss(kappa, ce, cert_ce, l1, trainable)
        aux = {
            "clean_loss": ce,
            "cert_loss": cert_ce,
            "clean_acc": batch_accuracy(logits, y),
            "cert_acc": cert_acc,
            **values,
        }
        return add_warmup(loss, aux, arch, params, x, eps, weight=reg_weight, tol=reg_tol,
                          eps_final=schedule.eps_final, lo=lo, hi=hi)  # fmt: skip

    return with_batch_stats(arch, objective) if bn_mode == "batch" else objective


def at_mean(objective: Objective, mean: LayerParams, frozen: LayerParams, x, y, step) -> dict[str, jax.Array]:  # type: ignore[no-untyped-def]
    """``objective`` at the unperturbed weights ``mean`` (the network a GLS trainer returns): ``loss_at_mean``
    and the clean / certified batch accuracies as ``clean_acc_at_mean``, ``cert_acc_at_mean``."""
    loss, aux = objective(mean, frozen, x, y, step)
    out = {"loss_at_mean": loss}
    out |= {f"{k}_at_mean": aux[k] for k in ("clean_acc", "cert_acc") if k in aux}
    return out
