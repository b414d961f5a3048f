"""PGD adversarial training (Madry et al., 2018), ℓ∞ or ℓ2:

    x_adv = PGD_ε(θ; x, y),   L(θ) = κ · CE(f_θ(x), y) + (1 - κ) · CE(f_θ(x_adv), y) + λ Σ|W|,

with ε and κ from the recipe schedule (κ_final = 0 is plain PGD training). The attack itself is
``jaxcert.attacks.pgd``; ``x_adv`` is treated as a constant when differentiating.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxcert.attacks import pgd
from jaxcert.attacks.pgd import check_norm
from jaxcert.bounds import cross_entropy
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import forward, merge
from jaxcert.train.gradient import gradient_trainer
from jaxcert.train.losses import batch_accuracy, mixed_loss
from jaxcert.train.schedules import RecipeSchedule
from jaxcert.train.state import Trainer


def adversarial_trainer(
    arch: Arch,
    optimizer: optax.GradientTransformation,
    schedule: RecipeSchedule,
    *,
    norm: str = "linf",
    attack_steps: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    l1: float = 0.0,
    lo: float = 0.0,
    hi: float = 1.0,
    bn_momentum: float = 0.1,
) -> Trainer:
    check_norm(norm)
    if attack_steps < 1:
        raise ValueError(f"attack_steps must be >= 1, got {attack_steps}")

    def loss_fn(trainable, frozen, x, x_adv, y, kappa):  # type: ignore[no-untyped-def]
        params = merge(trainable, frozen)
        logits, logits_adv = forward(arch, params, x), forward(arch, params, x_adv)
        ce, ce_adv = jnp.mean(cross_entropy(logits, y)), jnp.mean(cross_entropy(logits_adv, y))
        loss = mixed_loss(kappa, ce, ce_adv, l1, trainable)
        aux = {
            "clean_loss": ce,
            "adv_loss": ce_adv,
            "clean_acc": batch_accuracy(logits, y),
            "adv_acc": batch_accuracy(logits_adv, y),
        }
        return loss, aux

    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def estimate(trainable, frozen, x, y, step, key):  # type: ignore[no-untyped-def]
        values = schedule(step)
        params = jax.lax.stop_gradient(merge(trainable, frozen))
        x_adv = pgd(
            lambda z: forward(arch, params, z),
            x,
            y,
            values["eps"],
            key=key,
            norm=norm,
            steps=attack_steps,
            step_size=step_size,
            restarts=restarts,
            lo=lo,
            hi=hi,
        )
        x_adv = jax.lax.stop_gradient(x_adv)
        (loss, aux), grads = value_and_grad(trainable, frozen, x, x_adv, y, values["kappa"])
        return loss, grads, {**aux, "eps": values["eps"], "kappa": values["kappa"]}

    return gradient_trainer(arch, estimate, optimizer, bn_momentum=bn_momentum)
