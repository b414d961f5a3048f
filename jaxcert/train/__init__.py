"""Training: losses, schedules and trainers (standard, PGD, certified, GLS-RGS, GLS-PGPE); the state-of-the-art
objectives (SABR, TAPS, STAPS, MTL-/CC-/EXP-IBP) in :mod:`jaxcert.train.methods`.

The names below are imported on first use (PEP 562), so that ``python -m jaxcert.train --help`` and the
config modules do not pay for importing JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "adversarial_trainer": "adversarial",
    "certified_trainer": "certified",
    "gradient_trainer": "gradient",
    "plain_gradient": "gradient",
    "ibp_init": "init",
    "ibp_init_std": "init",
    "certified_objective": "losses",
    "clean_objective": "losses",
    "l1_penalty": "losses",
    "pgpe_trainer": "pgpe",
    "population_fitness": "pgpe",
    "gaussian_noise": "rgs",
    "perturb": "rgs",
    "rgs_trainer": "rgs",
    "smoothed_gradient": "rgs",
    "RecipeSchedule": "schedules",
    "linear_ramp": "schedules",
    "recipe_schedule": "schedules",
    "smoothed_ramp": "schedules",
    "step_decay": "schedules",
    "standard_trainer": "standard",
    "Trainer": "state",
    "TrainState": "state",
    "new_state": "state",
    "clipup": "es_optimizers",
    "mean_optimizer": "es_optimizers",
    "at_mean": "losses",
    "leaf_scales": "sigma",
    "relative_sigma": "sigma",
    "load_run_params": "warm_start",
    "make_objective": "methods",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'jaxcert.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxcert.train.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
