"""Training: losses, schedules and trainers (standard, PGD, certified, GLS-RGS, GLS-PGPE)."""

from jaxcert.train.adversarial import adversarial_trainer
from jaxcert.train.certified import certified_trainer
from jaxcert.train.es_optimizers import clipup, mean_optimizer
from jaxcert.train.gradient import gradient_trainer, plain_gradient
from jaxcert.train.init import ibp_init, ibp_init_std
from jaxcert.train.losses import at_mean, certified_objective, clean_objective, l1_penalty
from jaxcert.train.pgpe import pgpe_trainer, population_fitness
from jaxcert.train.rgs import gaussian_noise, perturb, rgs_trainer, smoothed_gradient
from jaxcert.train.schedules import RecipeSchedule, linear_ramp, recipe_schedule, smoothed_ramp, step_decay
from jaxcert.train.sigma import leaf_scales, relative_sigma
from jaxcert.train.standard import standard_trainer
from jaxcert.train.state import Trainer, TrainState, new_state
from jaxcert.train.warm_start import load_run_params

__all__ = [
    "RecipeSchedule",
    "TrainState",
    "Trainer",
    "adversarial_trainer",
    "at_mean",
    "certified_objective",
    "certified_trainer",
    "clean_objective",
    "clipup",
    "gaussian_noise",
    "gradient_trainer",
    "ibp_init",
    "ibp_init_std",
    "l1_penalty",
    "leaf_scales",
    "linear_ramp",
    "load_run_params",
    "mean_optimizer",
    "new_state",
    "perturb",
    "pgpe_trainer",
    "plain_gradient",
    "population_fitness",
    "recipe_schedule",
    "relative_sigma",
    "rgs_trainer",
    "smoothed_gradient",
    "smoothed_ramp",
    "standard_trainer",
    "step_decay",
]
