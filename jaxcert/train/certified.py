"""Certified training with any registered relaxation:
minimise ``κ CE + (1-κ) CE_cert(lb) + λ Σ|W|`` (see :func:`jaxcert.train.losses.certified_objective`)."""

from __future__ import annotations

from typing import Any

import optax

from jaxcert.nets.layers import Arch
from jaxcert.train.gradient import gradient_trainer, plain_gradient
from jaxcert.train.losses import certified_objective
from jaxcert.train.schedules import RecipeSchedule
from jaxcert.train.state import Trainer


def certified_trainer(
    arch: Arch,
    relaxation: str,
    optimizer: optax.GradientTransformation,
    schedule: RecipeSchedule,
    *,
    l1: float = 0.0,
    lo: float = 0.0,
    hi: float = 1.0,
    bn_momentum: float = 0.1,
    **options: Any,
) -> Trainer:
    objective = certified_objective(arch, relaxation, schedule, l1=l1, lo=lo, hi=hi, **options)
    return gradient_trainer(arch, plain_gradient(objective), optimizer, bn_momentum=bn_momentum)
