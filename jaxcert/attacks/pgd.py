"""Projected gradient descent (Madry et al., 2018) on the inputs, ℓ∞ or ℓ2 threat model.

From a random start in the ball, ``steps`` ascent steps on the attack loss ``L`` (cross-entropy or the
margin loss ``max_{j≠y} z_j - z_y``), each followed by the projection ``Π`` onto the ε-ball around ``x``
intersected with the data range ``[lo, hi]``:

    ℓ∞:  x ← Π(x + α · sign(∇L)),           Π = clip to [x-ε, x+ε], then to [lo, hi]
    ℓ2:  x ← Π(x + α · ∇L / ‖∇L‖₂),         Π = scale δ to ‖δ‖₂ ≤ ε, then clip to [lo, hi]

(clipping to the box never leaves the ℓ2 ball: it only shrinks |δ_i|). Every iterate of every restart
(and the clean point) is a candidate; per example, the one with the smallest margin ``z_y - max_{j≠y} z_j``
is returned, i.e. a misclassified point whenever one was found.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcert.bounds.box import check_eps
from jaxcert.bounds.checks import check_labels
from jaxcert.bounds.loss import cross_entropy
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")
_TINY = 1e-12


def classification_margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``z_y - max_{j≠y} z_j`` per example: positive iff the prediction is ``y`` (and unique)."""
    true = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return true - jnp.max(others, axis=-1)


def attack_loss(logits: jax.Array, y: jax.Array, loss: str) -> jax.Array:
    """Per-example loss the attack ascends: cross-entropy, or the negative margin."""
    return cross_entropy(logits, y) if loss == "ce" else -classification_margin(logits, y)


def _per_example(v: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a scalar or a (B,) vector against ``x`` of shape (B, ...)."""
    v = jnp.asarray(v, dtype=x.dtype)
    return v.reshape((-1,) + (1,) * (x.ndim - 1)) if v.ndim == 1 else v


def _l2_norm(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def project(x_adv: jax.Array, x: jax.Array, eps: jax.Array, norm: str, lo: float, hi: float) -> jax.Array:
    """Nearest-point projection onto the ε-ball around ``x`` (ℓ∞) or radial shrink (ℓ2), then [lo, hi]."""
    delta = x_adv - x
    if norm == "linf":
        delta = jnp.clip(delta, -eps, eps)
    else:
        delta = delta * jnp.minimum(1.0, eps / jnp.maximum(_l2_norm(delta), _TINY))
    return jnp.clip(x + delta, lo, hi)


def random_start(key: jax.Array, x: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
    """A uniform point of the ℓ∞ ball, or of the ℓ2 ball (radius ε·u^(1/d), Gaussian direction)."""
    if norm == "linf":
        return x + jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
    k_dir, k_rad = jax.random.split(key)
    direction = jax.random.normal(k_dir, x.shape, x.dtype)
    direction = direction / jnp.maximum(_l2_norm(direction), _TINY)
    dim = x[0].size
    radius = jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype) ** (1.0 / dim)
    return x + eps * radius * direction


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
    """sign(g) for ℓ∞, g / ‖g‖₂ for ℓ2 (zero where the gradient vanishes)."""
    if norm == "linf":
        return jnp.sign(grad)
    return grad / jnp.maximum(_l2_norm(grad), _TINY)


def check_norm(norm: str) -> None:
    """Raise ``ValueError`` unless ``norm`` is one of the threat models :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def check_attack_args(norm: str, loss: str, steps: int, restarts: int, eps: float | jax.Array) -> None:
    """Raise ``ValueError`` for an unknown ``norm`` or ``loss``, or (when concrete) ``steps < 0``,
    ``restarts < 1`` or a negative or non-finite ``eps``."""
    check_norm(norm)
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; expected one of {LOSSES}")
    # steps and restarts may be traced (one compiled attack for every budget): check them when concrete
    if not isinstance(steps, jax.core.Tracer) and steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not isinstance(restarts, jax.core.Tracer) and restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    check_eps(eps)


def pgd(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    key: jax.Array,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | jax.Array | None = None,
    restarts: int = 1,
    lo: float | jax.Array = 0.0,
    hi: float | jax.Array = 1.0,
    loss: str = "ce",
) -> jax.Array:
    """The worst point found by PGD in the ``norm``-ball of radius ``eps`` (scalar or per example)
    around ``x``, within ``[lo, hi]``. ``step_size`` defaults to ``2.5 ε / steps``. Pure and jittable
    (``norm`` and ``loss`` must be static; ``steps`` and ``restarts`` may be traced)."""
    check_attack_args(norm, loss, steps, restarts, eps)
    x = jnp.asarray(x, dtype=jnp.float32)
    y = jnp.asarray(y)
    check_labels(x, y)
    eps = _per_example(eps, x)
    alpha = 2.5 * eps / jnp.maximum(steps, 1) if step_size is None else _per_example(step_size, x)

    def objective(x_adv: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = logits_fn(x_adv)
        return jnp.sum(attack_loss(logits, y, loss)), logits

    value_and_grad = jax.value_and_grad(objective, has_aux=True)

    def keep_worse(best: tuple[jax.Array, jax.Array], x_adv: jax.Array, logits: jax.Array):
        best_x, best_margin = best
        margin = classification_margin(logits, y)
        worse = margin < best_margin
        return jnp.where(_per_example(worse, x), x_adv, best_x), jnp.where(worse, margin, best_margin)

    def step(_: int, carry):
        x_adv, best = carry
        (_, logits), grad = value_and_grad(x_adv)
        best = keep_worse(best, x_adv, logits)
        x_adv = project(x_adv + alpha * ascent_direction(grad, norm), x, eps, norm, lo, hi)
        return x_adv, best

    def restart(r: int, best):
        x_adv = project(random_start(jax.random.fold_in(key, r), x, eps, norm), x, eps, norm, lo, hi)
        x_adv, best = jax.lax.fori_loop(0, steps, step, (x_adv, best))
        return keep_worse(best, x_adv, logits_fn(x_adv))

    best = (x, classification_margin(logits_fn(x), y))
    best_x, _ = jax.lax.fori_loop(0, restarts, restart, best)
    return best_x


@functools.partial(jax.jit, static_argnames=("arch", "norm", "loss"))
def _jitted_pgd(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: jax.Array,
    key: jax.Array,
    steps: jax.Array,
    step_size: jax.Array | None,
    restarts: jax.Array,
    lo: jax.Array,
    hi: jax.Array,
    norm: str,
    loss: str,
) -> jax.Array:
    """:func:`pgd` against the network, every number traced (one compilation per arch, norm, loss, shapes)."""
    return pgd(
        lambda v: forward(arch, params, v),
        x,
        y,
        eps,
        key=key,
        norm=norm,
        steps=steps,
        step_size=step_size,
        restarts=restarts,
        lo=lo,
        hi=hi,
        loss=loss,
    )


def pgd_attack(
    arch: Arch,
    params: LayerParams,
    x: jax.Array,
    y: jax.Array,
    eps: float | jax.Array,
    *,
    key: jax.Array,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | jax.Array | None = None,
    restarts: int = 1,
    lo: float | jax.Array = 0.0,
    hi: float | jax.Array = 1.0,
    loss: str = "ce",
) -> jax.Array:
    """:func:`pgd` against ``forward(arch, params, ·)``, jitted: compiled once per (arch, norm, loss,
    shapes); ``eps``, ``steps``, ``restarts``, ``step_size``, ``lo``, ``hi`` are traced."""
    check_attack_args(norm, loss, steps, restarts, eps)
    as_float = lambda v: jnp.asarray(v, jnp.float32)
    return _jitted_pgd(
        arch,
        params,
        x,
        y,
        as_float(eps),
        key,
        jnp.asarray(steps, jnp.int32),
        None if step_size is None else as_float(step_size),
        jnp.asarray(restarts, jnp.int32),
        as_float(lo),
        as_float(hi),
        norm,
        loss,
    )
