"""Loss fusion: one back-substituted row bounds the certified cross-entropy of CROWN-IBP training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds import (
    certified_cross_entropy,
    cross_entropy,
    get_relaxation,
    ibp_bounds,
    input_box,
    is_certified,
    margin_spec,
)
from jaxcert.bounds.loss_fusion import exp_chords, fused_certified_loss
from jaxcert.nets import Dense, Flatten, Normalize, forward, init_params, split_trainable
from jaxcert.train import certified_objective, recipe_schedule
from jaxcert.train.configs import TrainConfig
from jaxcert.train.gradient import plain_gradient
from tests.soundness import NET_NAMES, sample_box, tiny_params


@functools.cache
def jitted_fused(net: str):
    arch = tiny_params(net, 0)[0]
    return jax.jit(lambda params, x, y, eps, beta: fused_certified_loss(arch, params, x, y, eps, beta=beta))


def example(net: str, seed: int, batch: int = 3):
    arch, in_shape, params = tiny_params(net, seed)
    x = jax.random.uniform(jax.random.key(seed), (batch, *in_shape))
    y = jax.random.randint(jax.random.key(seed + 1), (batch,), 0, arch[-1].features)
    return arch, params, x, y


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.4), beta=st.floats(0.0, 1.0))
def test_fused_loss_bounds_the_cross_entropy_at_sampled_points_and_vertices(net, seed, eps, beta):
    arch, params, x, y = example(net, seed)
    fused = jitted_fused(net)(params, x, y, eps, jnp.float32(beta))
    assert bool(jnp.all(jnp.isfinite(fused.loss)))
    lower, upper = input_box(x, eps)
    for b in range(x.shape[0]):
        points = sample_box(jax.random.key(seed + b), lower[b], upper[b], 256)
        ce = cross_entropy(forward(arch, params, points), jnp.full(points.shape[:1], y[b]))
        worst = float(jnp.max(ce))
        assert worst <= float(fused.loss[b]) + 1e-4 * (1 + abs(worst)), (b, worst, float(fused.loss[b]))


@pytest.mark.parametrize("net", NET_NAMES)
def test_fused_loss_at_eps_zero_is_the_clean_cross_entropy(net):
    arch, params, x, y = example(net, 5)
    fused = jitted_fused(net)(params, x, y, 0.0, jnp.float32(1.0))
    np.testing.assert_allclose(fused.loss, cross_entropy(forward(arch, params, x), y), rtol=1e-5, atol=1e-5)


NORMALIZE = (0.4, 0.3)


def linear_net_reference(params, x, y, eps):
    """``log max_box (1 + Σ_j chord_j(d_j(x)))`` in float64 from the formulas, for ``Flatten-Dense(K)`` after
    ``Normalize(m, s)``: ``d_j`` is affine in ``x``, so its range and the maximum of the chords' sum are exact."""
    mean, std = NORMALIZE
    W, b = np.asarray(params[2]["kernel"], np.float64), np.asarray(params[2]["bias"], np.float64)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    lower, upper = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    out = []
    for n in range(len(x)):
        others = [j for j in range(W.shape[1]) if j != y[n]]
        coef = (W[:, others] - W[:, [y[n]]]) / std  # d_j(x) = coef_j · x + offset_j
        offset = b[others] - b[y[n]] - mean * coef.sum(0)
        mid = centre[n] @ coef + offset
        spread = radius[n] @ np.abs(coef)
        lo, hi = mid - spread, mid + spread
        slope = np.where(hi > lo, (np.exp(hi) - np.exp(lo)) / np.maximum(hi - lo, 1e-300), np.exp(lo))
        row = coef @ slope  # Σ_j k_j d_j(x) = row · x + offset · slope
        best = centre[n] @ row + radius[n] @ np.abs(row) + offset @ slope
        out.append(np.log(1 + np.sum(np.exp(lo) - slope * lo) + best))
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.02, 0.1, 0.5])
def test_fused_loss_equals_the_exact_chord_bound_on_a_linear_net(eps):
    """On a linear net IBP gives the exact range of each ``d_j`` and back-substitution the exact maximum
    of the chords' sum: the bound must equal the formula (a looser chord, tangent or row would not)."""
    arch = (Normalize((NORMALIZE[0],), (NORMALIZE[1],)), Flatten(), Dense(4))
    params = init_params(arch, (3, 2, 1), seed=2)
    params[2] = {**params[2], "kernel": 3.0 * params[2]["kernel"]}  # logits that differ by several units
    x = jax.random.uniform(jax.random.key(3), (5, 3, 2, 1))
    y = jnp.array([0, 1, 2, 3, 1])
    fused = fused_certified_loss(arch, params, x, y, eps)
    np.testing.assert_allclose(fused.loss, linear_net_reference(params, x, y, eps), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("traced", [False, True])
def test_beta_mixes_the_fused_loss_with_the_certified_loss_of_ibp_margins(traced):
    arch, params, x, y = example("conv", 2)
    eps = 0.1
    C = margin_spec(y, arch[-1].features)
    ibp_margins = ibp_bounds(arch, params, *input_box(x, eps), C)[0]
    ibp_loss = certified_cross_entropy(ibp_margins)
    call = jitted_fused("conv") if traced else functools.partial(fused_certified_loss, arch)
    run = lambda beta: call(params, x, y, eps, beta=beta) if not traced else call(params, x, y, eps, jnp.float32(beta))
    full, none, half = run(1.0), run(0.0), run(0.5)
    np.testing.assert_allclose(none.loss, ibp_loss, rtol=1e-5)
    np.testing.assert_allclose(half.loss, 0.5 * full.loss + 0.5 * ibp_loss, rtol=1e-5)
    np.testing.assert_allclose(full.ibp_margins, ibp_margins, rtol=1e-5, atol=1e-6)
    assert not np.allclose(full.loss, ibp_loss)  # the fused bound is not IBP's


@pytest.mark.slow
@pytest.mark.parametrize("width", [0.0, 1e-6, 1e-3, 0.5, 1.0 - 1e-6, 1.0, 1.0 + 1e-6, 3.0, 80.0])
def test_exp_chords_lie_above_exp_and_touch_it_at_both_ends(width):
    lower = jnp.array([-2.0, 0.5, -30.0])
    upper = lower + width
    shift = jnp.maximum(upper, 0.0)
    at_lower, slope = exp_chords(lower, upper, shift)
    assert bool(jnp.all(jnp.isfinite(slope))) and bool(jnp.all(slope >= 0))
    np.testing.assert_allclose(at_lower, jnp.exp(lower - shift), rtol=1e-6)
    np.testing.assert_allclose(at_lower + slope * width, jnp.exp(upper - shift), rtol=1e-4, atol=1e-30)
    grid = lower[:, None] + jnp.linspace(0.0, 1.0, 101)[None] * width
    chord = at_lower[:, None] + slope[:, None] * (grid - lower[:, None])
    assert bool(jnp.all(chord >= jnp.exp(grid - shift[:, None]) * (1 - 1e-5)))


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.0, 0.05, 3.0])
def test_fused_loss_is_vmappable_over_parameter_samples_with_finite_gradients(eps):
    arch, params, x, y = example("bn", 4)
    keys = jax.random.split(jax.random.key(0), 3)
    samples = [jax.tree.map(lambda p, k=k: p + 0.01 * jax.random.normal(k, p.shape), params) for k in keys]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *samples)
    mean_loss = lambda p: jnp.mean(fused_certified_loss(arch, p, x, y, eps).loss)
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(mean_loss)))(stacked)
    for i, p in enumerate(samples):
        np.testing.assert_allclose(values[i], mean_loss(p), rtol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


def test_bad_inputs_to_the_fused_loss_are_clear_errors():
    arch, params, x, y = example("mlp", 0)
    with pytest.raises(ValueError, match="unknown option"):
        fused_certified_loss(arch, params, x, y, 0.1, bound_upper=False)
    with pytest.raises(ValueError, match="beta"):
        fused_certified_loss(arch, params, x, y, 0.1, beta=1.5)
    with pytest.raises(ValueError, match="labels"):
        fused_certified_loss(arch, params, x, y[:2], 0.1)
    with pytest.raises(ValueError, match="eps"):
        fused_certified_loss(arch, params, x, y, -0.1)
    with pytest.raises(ValueError, match="loss_fusion"):
        certified_objective(arch, "ibp", recipe_schedule(0.1), loss_fusion=True)
    with pytest.raises(ValueError, match="loss_fusion"):
        TrainConfig(loss_fusion=True, relaxation="ibp")
    with pytest.raises(ValueError, match="loss_fusion"):
        TrainConfig(loss_fusion=True, relaxation="crown-ibp", method="standard")
    TrainConfig(loss_fusion=True, relaxation="crown-ibp", method="rgs")  # accepted


@pytest.mark.slow
def test_the_fused_objective_trains_the_fused_bound_down():
    arch, params, x, y = example("conv", 6, batch=16)
    trainable, frozen = split_trainable(params)
    schedule = recipe_schedule(0.05, beta_final=1.0)  # no warm-up or ramp: ε = 0.05, κ = 0, β = 1 at once
    objective = certified_objective(arch, "crown-ibp", schedule, loss_fusion=True)
    loss, aux = jax.jit(objective)(trainable, frozen, x, y, 0)
    fused = fused_certified_loss(arch, params, x, y, 0.05)
    np.testing.assert_allclose(aux["cert_loss"], jnp.mean(fused.loss), rtol=1e-5)
    np.testing.assert_allclose(loss, aux["cert_loss"], rtol=1e-6)
    np.testing.assert_allclose(aux["cert_acc"], jnp.mean(is_certified(fused.ibp_margins)), rtol=1e-6)
    step = jax.jit(plain_gradient(objective))
    for _ in range(5):
        grads = step(trainable, frozen, x, y, 0, None)[1]
        trainable = jax.tree.map(lambda p, g: p - 0.05 * g, trainable, grads)
    assert float(jax.jit(objective)(trainable, frozen, x, y, 0)[0]) < 0.9 * float(loss)


def chord_formula_with(relaxation: str, arch, params, x, y, eps):
    """The fused bound written with ``relaxation``'s lower bound of the weighted margin row ``Σ_j k_j m_j``
    (chords from IBP's margin intervals, shift 0), through the public relaxation API."""
    lower, upper = input_box(x, eps)
    C = margin_spec(y, arch[-1].features)
    m_lo, m_hi = ibp_bounds(arch, params, lower, upper, C)
    d_lo, d_hi = -m_hi, -m_lo
    slope = (jnp.exp(d_hi) - jnp.exp(d_lo)) / (d_hi - d_lo)
    row_lb = get_relaxation(relaxation)(arch, params, lower, upper, jnp.einsum("bk,bkn->bn", slope, C)[:, None])[0]
    return jnp.log(1 + jnp.sum(jnp.exp(d_lo) - slope * d_lo, -1) - row_lb[:, 0])


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
def test_the_fused_row_is_bounded_by_crown_ibp_not_by_intervals(net):
    arch, params, x, y = example(net, 8, batch=4)
    eps = 0.05
    fused = jitted_fused(net)(params, x, y, eps, jnp.float32(1.0)).loss
    np.testing.assert_allclose(fused, chord_formula_with("crown-ibp", arch, params, x, y, eps), rtol=1e-4)
    with_intervals = chord_formula_with("ibp", arch, params, x, y, eps)
    assert bool(jnp.any(fused < with_intervals - 1e-3))  # so the equality above tells the two apart
