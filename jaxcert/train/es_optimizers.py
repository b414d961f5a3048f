"""Optimisers for the PGPE mean μ: ClipUp (default), SGD with momentum, Adam; optional weight decay.

PGPE hands the optimiser the rank-based search gradient ``g`` (evosax's ``grad_mean``, a direction whose
length carries little information). Adam rescales every coordinate to a step ≈ η whatever the signal, so
with noisy estimates each weight random-walks by ≈ η per generation. ClipUp (Toklu et al., 2020) bounds
the step's *global* norm instead:

    v ← m · v + g / ‖g‖,     v ← v · min(1, (s / η) / ‖v‖),     μ ← μ - η_t · v

(heavy-ball momentum ``m`` on the unit-norm gradient, velocity clipped so that a step ``η v`` is at most
the max speed ``s``; the paper recommends η = s / 2). ``η_t`` follows the run's learning-rate schedule
(the max speed decays with it). SGD is ``μ ← μ - η_t · v`` with ``v ← m v + g``. Weight decay is
decoupled: ``μ ← (1 - λ) μ + step`` every generation.
"""

from __future__ import annotations

import optax

from jaxcert.train.configs import PGPE_OPTIMIZERS


def clipup(
    learning_rate: optax.ScalarOrSchedule, max_speed: float, *, momentum: float = 0.9, base_lr: float | None = None
) -> optax.GradientTransformation:
    """ClipUp with step size ``learning_rate`` (float or schedule) and step norm at most ``max_speed``
    (relative to the step size ``base_lr``, default ``learning_rate``, when a schedule is given)."""
    base = learning_rate if base_lr is None else base_lr
    if callable(base):
        raise ValueError("clipup with a learning-rate schedule needs base_lr (the schedule's initial value)")
    if base <= 0 or max_speed <= 0:
        raise ValueError(f"clipup needs learning_rate > 0 and max_speed > 0, got {base} and {max_speed}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    from evosax.core.optimizer import scale_by_clipup  # not at import: evosax starts JAX's devices, which must
    # wait for jax.distributed.initialize in a multi-process run (jaxcert.train.distributed)

    return optax.chain(
        optax.normalize_by_update_norm(),
        scale_by_clipup(max_velocity_ratio=max_speed / base, momentum=momentum),
        optax.scale_by_learning_rate(learning_rate),
    )


def mean_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    *,
    base_lr: float,
    max_speed: float = 0.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    adam: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """The PGPE mean optimiser ``name`` (:data:`PGPE_OPTIMIZERS`); ``max_speed`` 0 means ``2 · base_lr``;
    ``adam`` replaces the plain ``optax.adam(learning_rate)`` (e.g. the run's Adam with gradient clipping)."""
    if name not in PGPE_OPTIMIZERS:
        raise ValueError(f"unknown PGPE optimizer {name!r}; known: {', '.join(PGPE_OPTIMIZERS)}")
    if not 0 <= weight_decay < 1:
        raise ValueError(f"weight_decay must be in [0, 1), got {weight_decay}")
    if name == "clipup":
        opt = clipup(learning_rate, max_speed or 2.0 * base_lr, momentum=momentum, base_lr=base_lr)
    elif name == "sgd":
        opt = optax.sgd(learning_rate, momentum=momentum or None)
    else:
        opt = adam if adam is not None else optax.adam(learning_rate)
    return optax.chain(opt, optax.add_decayed_weights(-weight_decay)) if weight_decay else opt
