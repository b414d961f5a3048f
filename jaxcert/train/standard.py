"""Standard (clean) training: minimise ``CE(f_θ(x), y) + λ Σ|W|`` with any optax optimiser."""

from __future__ import annotations

import optax

from jaxcert.nets.layers import Arch
from jaxcert.train.gradient import gradient_trainer, plain_gradient
from jaxcert.train.losses import clean_objective
from jaxcert.train.state import Trainer


def standard_trainer(
    arch: Arch,
    optimizer: optax.GradientTransformation,
    *,
    l1: float = 0.0,
    bn_momentum: float = 0.1,
    bn_mode: str = "eval",
) -> Trainer:
    objective = clean_objective(arch, l1=l1, bn_mode=bn_mode)
    return gradient_trainer(arch, plain_gradient(objective), optimizer, bn_momentum=bn_momentum)
