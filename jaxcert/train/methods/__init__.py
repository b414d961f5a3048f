"""State-of-the-art certified objectives, each usable by the certified, RGS and PGPE trainers.

:func:`make_objective` builds the objective ``(trainable, frozen, x, y, step) -> (loss, aux)`` of a name in
:data:`jaxcert.train.configs.OBJECTIVES`:

    certified   κ CE + (1-κ) CE_cert(lb over the ε-box)      (:func:`jaxcert.train.losses.certified_objective`)
    sabr        κ CE + (1-κ) R_SABR (small box of ratio λ)   (:mod:`.sabr`)
    taps/staps  κ CE + (1-κ) expand(R_TAPS, s) · L_IBP (on the ε-box / SABR's small box; L_IBP alone while
                ε ramps, ``taps_ibp_ramp``)   (:mod:`.taps`)
    mtl-ibp, cc-ibp, exp-ibp   κ CE + (1-κ) R_α             (:mod:`.expressive`)

each with the scheduled ε_t (and κ_t, β_t), the L1 term and the warm-up regularisers of the recipe
(:mod:`.objective`). Every objective is pure and jittable, and vmappable over GLS members.
"""

from __future__ import annotations

from typing import Any

from jaxcert.bounds.registry import is_interval
from jaxcert.nets.layers import Arch
from jaxcert.train.configs import OBJECTIVES
from jaxcert.train.losses import Objective, certified_objective
from jaxcert.train.methods.expressive import EXPRESSIVE_LOSSES, expressive_term
from jaxcert.train.methods.objective import RobustTerm, method_objective
from jaxcert.train.methods.sabr import sabr_term
from jaxcert.train.methods.taps import split_arch, split_index, taps_term
from jaxcert.train.schedules import RecipeSchedule

__all__ = ["OBJECTIVES", "make_objective", "robust_term", "split_arch", "split_index"]


def robust_term(
    name: str,
    arch: Arch,
    relaxation: str,
    *,
    attack_steps: int = 5,
    sabr_lambda: float = 0.4,
    method_alpha: float = 0.5,
    taps_split: int = -3,
    taps_estimator: str = "multi",
    taps_grad_scale: float = 5.0,
    taps_ibp_below: float | None = None,
    attack_step_rel: float = 0.0,
    lo: float = 0.0,
    hi: float = 1.0,
    **options: Any,
) -> RobustTerm:
    """The robust term of the objective ``name`` (any of :data:`OBJECTIVES` but ``certified``);
    ``attack_step_rel`` > 0 replaces the method's own input-PGD step (relative to ε); ``taps_ibp_below``:
    TAPS/STAPS train the IBP loss while the step's ε is below it (None: never)."""
    bounds = {"lo": lo, "hi": hi}
    step = {"step_rel": attack_step_rel} if attack_step_rel > 0 else {}
    if name == "sabr":  # attack_steps apart from ``options``, where ``steps`` is alpha-CROWN's
        return sabr_term(arch, relaxation, sabr_lambda, attack_steps=attack_steps, **bounds, **step, **options)
    if name in ("taps", "staps"):
        if not is_interval(relaxation):
            raise ValueError(f"{name} bounds its feature extractor with IBP, not relaxation {relaxation!r}")
        lam = sabr_lambda if name == "staps" else None
        taps = {"lam": lam, "estimator": taps_estimator, "grad_scale": taps_grad_scale, "ibp_below": taps_ibp_below}
        return taps_term(arch, taps_split, steps=attack_steps, **taps, **bounds, **step)
    if name in EXPRESSIVE_LOSSES:
        return expressive_term(
            name, arch, relaxation, method_alpha, attack_steps=attack_steps, **bounds, **step, **options
        )
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")


def make_objective(
    name: str,
    arch: Arch,
    relaxation: str,
    schedule: RecipeSchedule,
    *,
    seed: int = 0,
    l1: float = 0.0,
    lo: float = 0.0,
    hi: float = 1.0,
    bn_mode: str = "eval",
    reg_weight: float = 0.0,
    reg_tol: float = 0.5,
    loss_fusion: bool = False,
    attack_steps: int = 5,
    sabr_lambda: float = 0.4,
    method_alpha: float = 0.5,
    taps_split: int = -3,
    taps_estimator: str = "multi",
    taps_grad_scale: float = 5.0,
    taps_ibp_ramp: bool = True,
    attack_step_rel: float = 0.0,
    **options: Any,
) -> Objective:
    """The objective ``name`` (``certified``: :func:`certified_objective`, the method settings unused);
    ``taps_ibp_ramp``: TAPS/STAPS train the IBP loss until ε reaches the schedule's ``eps_final``."""
    recipe = {"l1": l1, "lo": lo, "hi": hi, "bn_mode": bn_mode, "reg_weight": reg_weight, "reg_tol": reg_tol}
    if name == "certified":
        return certified_objective(arch, relaxation, schedule, loss_fusion=loss_fusion, **recipe, **options)
    if loss_fusion:
        raise ValueError(f"loss_fusion fuses the plain certified loss; objective {name!r} needs margin bounds")
    ibp_below = None
    if taps_ibp_ramp and name in ("taps", "staps"):
        if schedule.eps_final is None:
            raise ValueError(f"taps_ibp_ramp needs a schedule whose eps_final is known; {name} got a hand-built one")
        ibp_below = schedule.eps_final
    term = robust_term(
        name, arch, relaxation, attack_steps=attack_steps, sabr_lambda=sabr_lambda, method_alpha=method_alpha,
        taps_split=taps_split, taps_estimator=taps_estimator, taps_grad_scale=taps_grad_scale,
        taps_ibp_below=ibp_below, attack_step_rel=attack_step_rel, lo=lo, hi=hi, **options,
    )  # fmt: skip
    return method_objective(arch, schedule, term, seed=seed, **recipe)
