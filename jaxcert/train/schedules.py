"""Pure, traceable schedules ``step -> value`` (optax style) for the certified-training recipe.

Recipe (docs/training.md): ``warmup`` clean steps (ε = 0, κ = 1, β = 1), then over ``ramp`` steps
ε goes 0 → ε_train, κ goes 1 → κ_final and β goes 1 → β_final; afterwards all stay at their final
values. The learning rate is multiplied by ``factor`` (0.1) at each of the ``decay_steps``.

Every schedule is a plain function of the (possibly traced) integer step returning a ``jnp`` scalar,
so it can be called inside ``jax.jit`` and handed to optax as a learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array | int], jax.Array]


def _check_window(begin: int, end: int) -> None:
    if begin < 0 or end < begin:
        raise ValueError(f"schedule window must satisfy 0 <= begin <= end, got begin={begin}, end={end}")


def linear_ramp(start: float, end: float, begin: int, end_step: int) -> Schedule:
    """``start`` before ``begin``, ``end`` after ``end_step``, linear in between:

    v(t) = start + (end - start) · clip((t - begin) / (end_step - begin), 0, 1).
    """
    _check_window(begin, end_step)
    length = max(end_step - begin, 1)

    def schedule(step: jax.Array | int) -> jax.Array:
        frac = jnp.clip((jnp.asarray(step, jnp.float32) - begin) / length, 0.0, 1.0)
        if end_step == begin:
            frac = jnp.where(jnp.asarray(step) >= begin, 1.0, 0.0)
        return jnp.asarray(start, jnp.float32) + (end - start) * frac

    return schedule


def smoothed_ramp(
    start: float, end: float, begin: int, end_step: int, *, mid: float = 0.25, power: float = 4.0
) -> Schedule:
    """Shi et al. / CROWN-IBP smoothed ramp: polynomial start, then linear, joined with equal slope.

    With ``T = end_step - begin``, ``m = mid · T`` and ``D = end - start``, for ``s = t - begin``:

        v = start + α s^p                      for 0 ≤ s < m,
        v = start + α m^p + (s - m) · α p m^(p-1)   for m ≤ s ≤ T,

    where ``α = D / (p m^(p-1) (T - m) + m^p)`` makes ``v(T) = end`` and the slope continuous at ``m``.
    """
    _check_window(begin, end_step)
    if not 0.0 < mid < 1.0:
        raise ValueError(f"smoothed_ramp: mid must be in (0, 1), got {mid}")
    if power < 1.0:
        raise ValueError(f"smoothed_ramp: power must be >= 1, got {power}")
    if end_step == begin:
        return linear_ramp(start, end, begin, end_step)
    total = float(end_step - begin)
    m = mid * total
    alpha = (end - start) / (power * m ** (power - 1) * (total - m) + m**power)
    slope = alpha * power * m ** (power - 1)

    def schedule(step: jax.Array | int) -> jax.Array:
        s = jnp.clip(jnp.asarray(step, jnp.float32) - begin, 0.0, total)
        poly = alpha * s**power
        lin = alpha * m**power + (s - m) * slope
        return jnp.asarray(start, jnp.float32) + jnp.where(s < m, poly, lin)

    return schedule


def step_decay(base: float, decay_steps: Sequence[int], factor: float = 0.1) -> Schedule:
    """Piecewise-constant learning rate: ``base · factor^(number of decay steps ≤ t)``."""
    if base <= 0:
        raise ValueError(f"learning rate must be positive, got {base}")
    steps = sorted(int(s) for s in decay_steps)
    return optax.piecewise_constant_schedule(base, {s: factor for s in steps})


@dataclasses.dataclass(frozen=True)
class RecipeSchedule:
    """The ε, κ and β schedules of one training run (all ``step -> value``); ``eps_final`` is the ε the
    ramp ends at (None if unknown, e.g. a hand-built schedule)."""

    eps: Schedule
    kappa: Schedule
    beta: Schedule
    eps_final: float | None = None

    def __call__(self, step: jax.Array | int) -> dict[str, jax.Array]:
        return {"eps": self.eps(step), "kappa": self.kappa(step), "beta": self.beta(step)}


def recipe_schedule(
    eps: float,
    *,
    warmup: int = 0,
    ramp: int = 0,
    kappa_final: float = 0.0,
    beta_final: float = 0.0,
    eps_ramp: str = "linear",
) -> RecipeSchedule:
    """ε: 0 → ``eps``, κ: 1 → ``kappa_final``, β: 1 → ``beta_final``, all over ``[warmup, warmup + ramp]``.

    ``eps_ramp`` is ``"linear"`` or ``"smooth"`` (:func:`smoothed_ramp`, for ε only).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if warmup < 0 or ramp < 0:
        raise ValueError(f"warmup and ramp must be >= 0, got warmup={warmup}, ramp={ramp}")
    for name, value in (("kappa_final", kappa_final), ("beta_final", beta_final)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    end = warmup + ramp
    if eps_ramp == "linear":
        eps_fn = linear_ramp(0.0, eps, warmup, end)
    elif eps_ramp == "smooth":
        eps_fn = smoothed_ramp(0.0, eps, warmup, end)
    else:
        raise ValueError(f"unknown eps_ramp {eps_ramp!r}; expected 'linear' or 'smooth'")
    return RecipeSchedule(
        eps=eps_fn,
        kappa=linear_ramp(1.0, kappa_final, warmup, end),
        beta=linear_ramp(1.0, beta_final, warmup, end),
        eps_final=float(eps),
    )
