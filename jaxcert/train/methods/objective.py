"""The training objective around a method's robust term: the recipe's clean/robust mix.

A *robust term* is the pure function ``(params, x, y, values, key) -> (R, aux)`` of a state-of-the-art
method (SABR, TAPS, STAPS, MTL-/CC-/EXP-IBP), with ``values = schedule(step)`` (the scheduled ε_t, κ_t, β_t)
and ``key`` the PGD key of the step. The objective is the recipe's

    L(θ) = κ_t · CE(f_θ(x), y) + (1 - κ_t) · R_θ(x, y; ε_t) + λ_1 Σ|W|
           (+ w(ε_t) · (L_tight + L_relu) with Shi et al.'s warm-up regularisers, ``reg_weight`` > 0),

the same mix as :func:`jaxcert.train.losses.certified_objective` with ``R`` in place of the certified
cross-entropy. It is an *objective* ``(trainable, frozen, x, y, step) -> (loss, aux)``, shared by the
certified (gradient), RGS and PGPE trainers. The PGD key is ``fold_in(key(seed), step)``: the objective
stays a deterministic function of its arguments (what PGPE's fitness differences and RGS's vmapped samples
need), every GLS member of a step sees the same attack start (common random numbers), and the key equals
the step key the training loop hands the PGD trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcert.bounds import cross_entropy
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward, merge
from jaxcert.train.batch_norm import check_bn_mode, with_batch_stats
from jaxcert.train.losses import Objective, batch_accuracy, mixed_loss
from jaxcert.train.schedules import RecipeSchedule
from jaxcert.train.warmup_regularisers import add_warmup, check_warmup

#: ``(params, x, y, values, key) -> (robust loss R (scalar), aux)``
RobustTerm = Callable[[LayerParams, jax.Array, jax.Array, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


def step_key(seed: int, step: jax.Array | int) -> jax.Array:
    """``fold_in(key(seed), step)``: the PGD key of a training step (the loop's step key)."""
    return jax.random.fold_in(jax.random.key(seed), step)


def method_objective(
    arch: Arch,
    schedule: RecipeSchedule,
    term: RobustTerm,
    *,
    seed: int = 0,
    l1: float = 0.0,
    lo: float = 0.0,
    hi: float = 1.0,
    bn_mode: str = "eval",
    reg_weight: float = 0.0,
    reg_tol: float = 0.5,
) -> Objective:
    """``κ CE + (1-κ) R + λ Σ|W|`` (+ warm-up regularisers) with ``R = term(...)`` (see the module doc)."""
    check_bn_mode(bn_mode)
    check_warmup(reg_weight, reg_tol, schedule.eps_final)

    def objective(trainable, frozen, x, y, step):  # type: ignore[no-untyped-def]
        params = merge(trainable, frozen)
        values = schedule(step)
        logits = forward(arch, params, x)
        ce = jnp.mean(cross_entropy(logits, y))
        robust, aux = term(params, x, y, values, step_key(seed, step))
        loss = mixed_loss(values["kappa"], ce, robust, l1, trainable)
        values.pop("beta")  # the terms that use β log it
        aux = {"clean_loss": ce, "clean_acc": batch_accuracy(logits, y), "robust_loss": robust, **values, **aux}
        return add_warmup(loss, aux, arch, params, x, values["eps"], weight=reg_weight, tol=reg_tol,
                          eps_final=schedule.eps_final, lo=lo, hi=hi)  # fmt: skip

    return with_batch_stats(arch, objective) if bn_mode == "batch" else objective
