"""TAPS (Mao et al., NeurIPS 2023) and STAPS: IBP through a feature extractor, PGD through the classifier.

The network is split at a layer index ``k``, ``f = g ∘ h`` with ``h`` = the first ``k`` layers (negative ``k``:
all but the last ``-k``). IBP bounds the extractor over the input box, giving the latent box

    [l, u] = IBP_h([L, U]),

and PGD through the classifier over that box estimates the worst case (TAPS's single estimator: the point
of largest CE among ``attack_steps`` sign steps of ``max(0.2, 2 / steps) · (u - l)`` per coordinate from a
uniform random start, the reference's step rule; the weights held constant):

    p* = PGD over p ∈ [l, u] of CE(g_θ(p), y),    R_TAPS(θ) = mean CE(g_θ(connect(l, u, p*)), y).

The *gradient connector* (the reference's rectified linear link, slack ``c = 0.5``) passes the gradient at
``p*`` to the box bounds, so that the extractor learns through the estimate: ``connect`` is the identity
forwards; backwards, with ``s = c (u - l)``, a coordinate of ``p*`` within ``s`` of ``u`` sends the share
``(p* - (u - s)) / s`` of its gradient to ``u``, and one within ``s`` of ``l`` the share ``(l + s - p*) / s``
to ``l`` (a coordinate at a bound sends all of it). The classifier's weights get the gradient of ``g`` at ``p*``.

At ``k = 0`` the latent box is the input box (which does not depend on θ): TAPS is PGD training. At the
output (``k`` = number of layers) ``g`` is the identity and ``p*`` the worst corner of the IBP logit box,
``(l_y, u_j)_{j≠y}``. STAPS runs TAPS on SABR's small box (:mod:`jaxcert.train.methods.sabr`) instead of the
ε-box; ``λ = 1`` is TAPS.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcert.bounds import cross_entropy, input_box
from jaxcert.bounds.ibp import interval_layers
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward
from jaxcert.train.losses import batch_accuracy
from jaxcert.train.methods.objective import RobustTerm
from jaxcert.train.methods.sabr import check_lambda, sabr_region

#: Slack of the rectified linear gradient connector, as a fraction of the box width (the reference's 0.5).
CONNECTOR_SLACK = 0.5
_TOL = 1e-5


def split_index(split: int, depth: int) -> int:
    """The extractor's layer count for ``split`` (negative: ``depth + split``); ``ValueError`` out of range."""
    if not -depth <= split <= depth:
        raise ValueError(
            f"taps_split {split} is out of range for a network of {depth} layers (use -{depth}..{depth}: "
            f"0 = before the first layer, {depth} = at the output, negative = all but the last layers)"
        )
    return split if split >= 0 else depth + split


def latent_step(steps: int) -> float:
    """The latent PGD step as a fraction of the box width: ``max(0.2, 2 / steps)``."""
    return max(0.2, 2.0 / steps)


def latent_pgd(
    classifier: Callable[[jax.Array], jax.Array],
    lower: jax.Array,
    upper: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    steps: int,
) -> jax.Array:
    """The point of largest CE among the iterates ``p ← clip(p + max(0.2, 2/steps) (u - l) sign ∇CE, l, u)``
    from a uniform start in the box ``[lower, upper]`` (a constant: ``stop_gradient``)."""
    if steps < 1:
        raise ValueError(f"the latent PGD needs steps >= 1, got {steps}")
    lower, upper = jax.lax.stop_gradient(lower), jax.lax.stop_gradient(upper)
    step = latent_step(steps) * (upper - lower)
    losses = lambda p: cross_entropy(classifier(p), y)
    value_and_grad = jax.value_and_grad(lambda p: (lambda v: (jnp.sum(v), v))(losses(p)), has_aux=True)
    rows = lambda mask: mask.reshape((-1,) + (1,) * (lower.ndim - 1))

    def body(_: int, carry):  # type: ignore[no-untyped-def]
        p, best, best_loss = carry
        (_, loss), grad = value_and_grad(p)
        better = loss >= best_loss
        best, best_loss = jnp.where(rows(better), p, best), jnp.where(better, loss, best_loss)
        return jnp.clip(p + step * jnp.sign(grad), lower, upper), best, best_loss

    start = lower + jax.random.uniform(key, lower.shape, lower.dtype) * (upper - lower)
    init = (start, start, jnp.full(lower.shape[:1], -jnp.inf, lower.dtype))
    p, best, best_loss = jax.lax.fori_loop(0, steps, body, init)
    best = jnp.where(rows(losses(p) >= best_loss), p, best)
    return jax.lax.stop_gradient(best)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def connect(lower: jax.Array, upper: jax.Array, point: jax.Array, slack: float = CONNECTOR_SLACK) -> jax.Array:
    """``point`` (a constant forwards); backwards the rectified linear link to ``lower`` and ``upper``."""
    del lower, upper
    return jax.lax.stop_gradient(point)


def _connect_fwd(lower, upper, point, slack):  # type: ignore[no-untyped-def]
    return jax.lax.stop_gradient(point), (lower, upper, point)


def _connect_bwd(slack, residuals, grad):  # type: ignore[no-untyped-def]
    lower, upper, point = residuals
    s = slack * (upper - lower)
    denom = jnp.maximum(s, _TOL)
    to_upper = jnp.where(point >= upper - s, jnp.maximum(point - (upper - s), _TOL / 2) / denom, 0.0)
    to_lower = jnp.where(point <= lower + s, jnp.maximum(lower + s - point, _TOL / 2) / denom, 0.0)
    return grad * to_lower, grad * to_upper, jnp.zeros_like(point)


connect.defvjp(_connect_fwd, _connect_bwd)


def taps_estimate(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    split: int,
    steps: int,
) -> jax.Array:
    """Logits ``g_θ(connect(l, u, p*))`` of TAPS's latent estimate over the input box ``[lower, upper]``."""
    k = split_index(split, len(arch))
    head, head_params = arch[k:], params[k:]
    lat_lo, lat_hi = interval_layers(arch[:k], params[:k], lower, upper)[-1]
    stopped = jax.lax.stop_gradient(head_params)
    point = latent_pgd(lambda p: forward(head, stopped, p), lat_lo, lat_hi, y, key, steps=steps)
    return forward(head, head_params, connect(lat_lo, lat_hi, point))


def taps_term(
    arch: Arch, split: int, *, steps: int, lam: float | None = None, lo: float = 0.0, hi: float = 1.0
) -> RobustTerm:
    """``R_TAPS`` over the ε-box (``lam`` None: TAPS) or over SABR's small box of ratio ``lam`` (STAPS); logs
    ``taps_loss`` and ``taps_acc`` (the fraction whose estimated worst case is still classified right)."""
    split_index(split, len(arch))
    if lam is not None:
        check_lambda(lam)

    def term(params, x, y, values, key):  # type: ignore[no-untyped-def]
        eps = values["eps"]
        box_key, latent_key = jax.random.split(key)
        if lam is not None:
            stopped = jax.lax.stop_gradient(params)
            logits_fn = lambda z: forward(arch, stopped, z)
            lower, upper = sabr_region(logits_fn, x, y, eps, lam, box_key, steps=steps, lo=lo, hi=hi)
        else:
            lower, upper = input_box(x, eps, lo, hi)
        logits = taps_estimate(arch, params, lower, upper, y, latent_key, split=split, steps=steps)
        loss = jnp.mean(cross_entropy(logits, y))
        return loss, {"taps_loss": loss, "taps_acc": batch_accuracy(logits, y)}

    return term
