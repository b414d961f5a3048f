"""TAPS (Mao et al., NeurIPS 2023) and STAPS: IBP through a feature extractor, PGD through the classifier.

The network is split at a layer index ``k``, ``f = g ∘ h`` with ``h`` = the first ``k`` layers (negative ``k``:
all but the last ``-k``). IBP bounds the extractor over the input box, giving the latent box

    [l, u] = IBP_h([L, U]),

and PGD through the classifier over that box estimates the worst case of each margin
``d_j(p) = g_θ(p)_y - g_θ(p)_j`` (j ≠ y), the weights held constant. TAPS's default *multi-estimator*
(``estimator="multi"``, eth-sri/TAPS ``_get_pivotal_points``) runs one PGD point per margin,

    p_j* = argmin over p ∈ [l, u] of d_j(p)       (sign steps of α_i (u - l) from a uniform start, keeping the
                                                 lowest d_j among the steps + 1 iterates; α_0 = max(0.2, 2/steps),
                                                 ×0.1 at 0.7 steps for 20–50 steps, the reference's schedule),
    R_TAPS(θ) = mean CE_cert( (d_j(connect(l, u, p_j*)))_j ),

``CE_cert(v) = log(1 + Σ_j exp(-v_j))``. ``estimator="single"`` uses one point for all margins, the point of
largest CE among ``attack_steps`` sign steps of ``max(0.2, 2 / steps) · (u - l)`` from a uniform start, and
``R = mean CE(g_θ(connect(l, u, p*)), y)`` (= ``CE_cert`` of its margins).

The *gradient connector* (the reference's rectified linear link, slack ``c = 0.5``) passes the gradient at
``p*`` to the box bounds, so that the extractor learns through the estimate: ``connect`` is the identity
forwards; backwards, with ``s = c (u - l)``, a coordinate of ``p*`` within ``s`` of ``u`` sends the share
``(p* - (u - s)) / s`` of its gradient to ``u``, and one within ``s`` of ``l`` the share ``(l + s - p*) / s``
to ``l`` (a coordinate at a bound sends all of it). The classifier's weights get the gradient of ``g`` at ``p*``.

Both estimates lie between the PGD loss and the IBP loss: ``d_j(p_j*) ≥ min_box d_j ≥`` IBP's bound. At
``k = 0`` the latent box is the input box (which does not depend on θ): the single estimator is PGD training.
At the output (``k`` = number of layers) ``g`` is the identity: the multi-estimator's ``p_j*`` is the corner
``(l_y, u_j)`` of the IBP logit box and ``d_j = l_y - u_j``, the single one's the worst corner
``(l_y, u_j)_{j≠y}``.

The paper's loss multiplies the estimate by the IBP loss over the same input region, with the estimate's
gradient scaled by ``s`` (eth-sri/TAPS's ``--taps-grad-scale``; 5 in CTRAIN, 4 in the MNIST scripts):

    L = expand(R_TAPS, s) · L_IBP,    L_IBP = mean CE_cert(IBP margin lower bounds over the region),

``expand(v, s) = s·v − (s − 1)·stop_gradient(v)`` (the value ``v``, the gradient ``s·∇v``), so
``∇L = s·L_IBP·∇R_TAPS + R_TAPS·∇L_IBP``. ``s = 0`` trains ``R_TAPS`` alone (the definition's special cases
above hold there). STAPS runs TAPS on SABR's small box (:mod:`jaxcert.train.methods.sabr`) instead of the
ε-box; ``λ = 1`` is TAPS.

*IBP during the ε ramp* (``ibp_below``, the papers' design: eth-sri/TAPS trains IBP until the ε annealing
ends unless ``--no-ibp-anneal``, CTRAIN likewise): while the scheduled ``ε_t < ε_final`` the term is the IBP
loss over the same region,

    L = L_IBP        (TAPS: the ε-box; STAPS: SABR's small box, i.e. SABR with IBP),

and the product above from the step ε reaches ``ε_final``. The phase is a ``lax.cond`` on the step's ε, a
scalar shared by every GLS member, so one branch runs.

On a residual net the split may not fall inside a residual block (a shortcut from the extractor into the
classifier): an error at set-up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcert.bounds import certified_cross_entropy, cross_entropy, input_box, is_certified
from jaxcert.bounds.ibp import interval_layers
from jaxcert.bounds.spec import batch_margin_spec
from jaxcert.nets.graph import suffix
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, forward
from jaxcert.train.methods.objective import RobustTerm
from jaxcert.train.methods.sabr import box_margin_lower_bounds, check_lambda, sabr_region
from jaxcert.train.methods.sabr_attack import SABR_STEP

#: Slack of the rectified linear gradient connector, as a fraction of the box width (the reference's 0.5).
CONNECTOR_SLACK = 0.5
_TOL = 1e-5
#: relative tolerance of "ε_t < ε_final" (the ramp's last value is ε_final in float32)
RAMP_TOL = 1e-6
#: TAPS's latent estimators (:data:`jaxcert.train.configs.TAPS_ESTIMATORS`).
ESTIMATORS = ("multi", "single")


def split_index(split: int, depth: int) -> int:
    """The extractor's layer count for ``split`` (negative: ``depth + split``); ``ValueError`` out of range."""
    if not -depth <= split <= depth:
        raise ValueError(
            f"taps_split {split} is out of range for a network of {depth} layers (use -{depth}..{depth}: "
            f"0 = before the first layer, {depth} = at the output, negative = all but the last layers)"
        )
    return split if split >= 0 else depth + split


def split_arch(arch: Arch, split: int) -> tuple[int, Arch]:
    """``(k, classifier)``: the extractor's layer count and the classifier ``arch[k:]`` as an architecture of
    its own; ``ValueError`` if the split falls inside a residual block (a shortcut crossing it)."""
    k = split_index(split, len(arch))
    try:
        return k, suffix(arch, k)
    except ValueError as err:
        raise ValueError(f"taps_split {split}: {err}") from None


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


def latent_milestones(steps: int) -> tuple[int, ...]:
    """The steps after which the multi-estimator's step is ×0.1 (the reference's ``select_schedule``)."""
    if 20 <= steps <= 50:
        return (int(0.7 * steps),)
    if 50 < steps <= 80:
        return int(0.4 * steps), int(0.7 * steps)
    if steps > 80:
        return int(0.3 * steps), int(0.6 * steps), int(0.8 * steps)
    return ()


def latent_pgd_multi(
    classifier: Callable[[jax.Array], jax.Array],
    lower: jax.Array,
    upper: jax.Array,
    C: jax.Array,
    key: jax.Array,
    *,
    steps: int,
) -> jax.Array:
    """Points ``p_j*`` (B, K-1, *latent) each minimising its own margin ``C_j · classifier(p)`` over the box
    ``[lower, upper]`` (module doc), a constant (``stop_gradient``); ``C`` the (B, K-1, K) margin rows."""
    if steps < 1:
        raise ValueError(f"the latent PGD needs steps >= 1, got {steps}")
    rows = C.shape[1]
    lower, upper = (jnp.repeat(jax.lax.stop_gradient(b)[:, None], rows, axis=1) for b in (lower, upper))
    milestones = latent_milestones(steps)
    sizes = jnp.asarray([latent_step(steps) * 0.1 ** sum(i >= m for m in milestones) for i in range(steps)])

    def margins(p: jax.Array) -> jax.Array:  # (B, K-1): d_j at p_j
        logits = classifier(p.reshape(-1, *p.shape[2:])).reshape(*p.shape[:2], -1)
        return jnp.einsum("bkn,bkn->bk", C, logits)

    value_and_grad = jax.value_and_grad(lambda p: (lambda d: (jnp.sum(d), d))(margins(p)), has_aux=True)
    cells = lambda mask: mask.reshape(mask.shape + (1,) * (lower.ndim - 2))

    def body(i: int, carry):  # type: ignore[no-untyped-def]
        p, best, best_margin = carry
        (_, d), grad = value_and_grad(p)
        better = d < best_margin
        best, best_margin = jnp.where(cells(better), p, best), jnp.where(better, d, best_margin)
        return jnp.clip(p - sizes[i] * (upper - lower) * jnp.sign(grad), lower, upper), best, best_margin

    start = lower + jax.random.uniform(key, lower.shape, lower.dtype) * (upper - lower)
    p, best, best_margin = jax.lax.fori_loop(0, steps, body, (start, start, jnp.full(C.shape[:2], jnp.inf)))
    best = jnp.where(cells(margins(p) < best_margin), p, best)
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


def taps_margins(
    arch: Arch,
    params: LayerParams,
    lower: jax.Array,
    upper: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    split: int,
    steps: int,
    estimator: str = "multi",
) -> jax.Array:
    """TAPS's estimate of the margins ``z_y - z_j`` (j ≠ y, shape (B, K-1)) over the input box
    ``[lower, upper]``: ``d_j(connect(l, u, p_j*))`` (module doc), differentiable through the connector."""
    k, head = split_arch(arch, split)
    head_params = params[k:]
    lat_lo, lat_hi = interval_layers(arch[:k], params[:k], lower, upper)[-1]
    stopped = jax.lax.stop_gradient(head_params)
    classifier = lambda p: forward(head, stopped, p)
    C = batch_margin_spec(arch, params, lower, y)
    if estimator == "single":
        point = latent_pgd(classifier, lat_lo, lat_hi, y, key, steps=steps)
        return jnp.einsum("bkn,bn->bk", C, forward(head, head_params, connect(lat_lo, lat_hi, point)))
    if estimator != "multi":
        raise ValueError(f"unknown TAPS estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    points = latent_pgd_multi(classifier, lat_lo, lat_hi, C, key, steps=steps)
    spread = lambda b: jnp.broadcast_to(b[:, None], points.shape)  # the connector's gradients sum over j
    linked = connect(spread(lat_lo), spread(lat_hi), points)
    logits = forward(head, head_params, linked.reshape(-1, *points.shape[2:])).reshape(*points.shape[:2], -1)
    return jnp.einsum("bkn,bkn->bk", C, logits)


def margins_loss(margins: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``mean CE_cert(margins)`` and the aux ``taps_loss`` (that mean) and ``taps_acc`` (the fraction whose
    margins are all positive) of margin estimates or bounds (B, K-1)."""
    loss = jnp.mean(certified_cross_entropy(margins))
    return loss, {"taps_loss": loss, "taps_acc": jnp.mean(is_certified(margins).astype(jnp.float32))}


def expand_gradient(value: jax.Array, scale: float) -> jax.Array:
    """``value`` forwards, ``scale ×`` its gradient backwards: ``scale·v − (scale − 1)·stop_gradient(v)``."""
    return scale * value - (scale - 1.0) * jax.lax.stop_gradient(value)


def taps_term(
    arch: Arch,
    split: int,
    *,
    steps: int,
    lam: float | None = None,
    estimator: str = "multi",
    grad_scale: float = 5.0,
    ibp_below: float | None = None,
    step_rel: float = SABR_STEP,
    lo: float = 0.0,
    hi: float = 1.0,
) -> RobustTerm:
    """``expand(R_TAPS, grad_scale) · L_IBP`` (``grad_scale`` 0: ``R_TAPS``) over the ε-box (``lam`` None: TAPS)
    or over SABR's small box of ratio ``lam`` (STAPS, its PGD step ``step_rel``); with ``ibp_below`` (the
    final ε of the ramp) ``L_IBP`` alone over that region while ``ε_t < ibp_below``. Logs ``taps_loss``
    (R_TAPS), ``taps_acc`` (the fraction whose estimated margins are all positive), with the product
    ``taps_ibp_loss``, and with ``ibp_below`` ``taps_phase`` (0: IBP, 1: TAPS); in the IBP phase
    ``taps_loss`` and ``taps_acc`` are the IBP bound's (an upper bound of R_TAPS, a lower bound of
    ``taps_acc``)."""
    split_arch(arch, split)
    if grad_scale < 0:
        raise ValueError(f"the TAPS gradient scale must be >= 0 (0: R_TAPS alone), got {grad_scale}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown TAPS estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    if lam is not None:
        check_lambda(lam)

    def term(params, x, y, values, key):  # type: ignore[no-untyped-def]
        eps = values["eps"]
        box_key, latent_key = jax.random.split(key)
        if lam is not None:
            stopped = jax.lax.stop_gradient(params)
            logits_fn = lambda z: forward(arch, stopped, z)
            lower, upper = sabr_region(logits_fn, x, y, eps, lam, box_key, steps=steps, step_rel=step_rel, lo=lo, hi=hi)
        else:
            lower, upper = input_box(x, eps, lo, hi)
        ibp_margins = lambda: box_margin_lower_bounds(arch, params, lower, upper, y, relaxation="ibp")

        def taps_phase(_: None) -> tuple[jax.Array, dict]:
            d = taps_margins(arch, params, lower, upper, y, latent_key, split=split, steps=steps, estimator=estimator)
            loss, aux = margins_loss(d)
            if grad_scale == 0:
                return loss, aux
            ibp_loss = jnp.mean(certified_cross_entropy(ibp_margins()))
            return expand_gradient(loss, grad_scale) * ibp_loss, aux | {"taps_ibp_loss": ibp_loss}

        if ibp_below is None:
            return taps_phase(None)

        def ibp_phase(_: None) -> tuple[jax.Array, dict]:
            loss, aux = margins_loss(ibp_margins())
            return loss, aux if grad_scale == 0 else aux | {"taps_ibp_loss": loss}

        ramping = eps < ibp_below * (1.0 - RAMP_TOL)
        loss, aux = jax.lax.cond(ramping, ibp_phase, taps_phase, None)
        return loss, aux | {"taps_phase": 1.0 - ramping.astype(jnp.float32)}

    return term
