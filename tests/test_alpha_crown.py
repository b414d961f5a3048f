"""alpha-CROWN and the Lee et al. slopes: soundness, tightness against CROWN and the LP, the slope choice."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds import certified_cross_entropy, get_relaxation, margin_spec
from jaxcert.bounds.alpha_crown import bounds_with_slopes, fixed_intermediate, lee_slopes
from jaxcert.bounds.backsub import split_two_sided, two_sided_rows
from jaxcert.bounds.crown import crown_with_intermediate
from jaxcert.bounds.exact import lp_bounds
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets import Dense, ReLU
from tests.soundness import NET_NAMES
from tests.test_crown import assert_contains, example_box, net_arch, split_rows, with_identity_rows


@functools.cache
def alpha_family(net: str, steps: int = 10):
    """Jitted ``(params, lo, hi, C) -> {name: (lb, ub, logit_lb, logit_ub)}`` for alpha-CROWN, Lee, CROWN."""
    arch, _ = net_arch(net)

    def fn(params, lo, hi, C):
        spec = with_identity_rows(C)
        return {
            "alpha-crown": split_rows(*get_relaxation("alpha-crown")(arch, params, lo, hi, spec, steps=steps), C),
            "crown-lee": split_rows(*get_relaxation("crown-lee")(arch, params, lo, hi, spec), C),
            "crown": split_rows(*get_relaxation("crown")(arch, params, lo, hi, spec), C),
        }

    return jax.jit(fn)


@functools.cache
def alpha_and_crown(net: str, steps: int):
    """Jitted ``(params, lo, hi, C) -> ((lb, ub) of alpha-CROWN, (lb, ub, pre-activation bounds) of CROWN)``."""
    arch, _ = net_arch(net)
    alpha = get_relaxation("alpha-crown")
    return jax.jit(
        lambda p, lo, hi, C: (alpha(arch, p, lo, hi, C, steps=steps), crown_with_intermediate(arch, p, lo, hi, C))
    )


def family_bounds(net: str, seed: int, eps: float, steps: int = 10):
    arch, params, lo, hi, C = example_box(net, seed, eps)
    return arch, params, lo, hi, C, alpha_family(net, steps)(params, lo, hi, C)


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_alpha_crown_and_lee_are_sound_and_alpha_crown_is_never_looser_than_crown(net, seed, eps):
    _, params, lo, hi, C, bounds = family_bounds(net, seed, eps)
    assert_contains(net, params, lo, hi, C, bounds, seed)
    alpha, crown = bounds["alpha-crown"], bounds["crown"]
    for k in (0, 2):  # lower bounds of margins and logits
        assert np.all(alpha[k] >= crown[k] - 1e-5)
        assert np.all(alpha[k + 1] <= crown[k + 1] + 1e-5)


@pytest.mark.parametrize(("net", "eps"), [("one_layer", 0.1), ("mlp", 0.08)])
def test_alpha_crown_approaches_the_lp_with_the_same_intermediate_bounds(net, eps):
    """Optimal per-row slopes reach the triangle-LP value on one ReLU layer; the LP is never beaten."""
    arch, params, lo, hi, C = example_box(net, 3, eps)
    (lb, ub), (crown_lb, crown_ub, pre) = alpha_and_crown(net, 150)(params, lo, hi, C)
    lp_lb, lp_ub = lp_bounds(arch, params, lo, hi, C, intermediate=pre)
    assert np.all(lp_lb >= lb - 1e-4) and np.all(lp_ub <= ub + 1e-4)
    if net == "one_layer":
        gap_crown = np.sum(lp_lb - crown_lb) + np.sum(crown_ub - lp_ub)
        gap_alpha = np.sum(lp_lb - lb) + np.sum(ub - lp_ub)
        assert gap_crown > 1e-2, "choose an example where CROWN is visibly looser than the LP"
        assert gap_alpha <= 0.02 * gap_crown + 1e-3


@pytest.mark.slow
def test_alpha_crown_on_ibp_intermediate_bounds_is_never_looser_than_crown_ibp():
    arch, params, lo, hi, C = example_box("conv", 4, 0.1)
    fn = jax.jit(
        lambda p: (
            get_relaxation("alpha-crown")(arch, p, lo, hi, C, intermediate="ibp", steps=10),
            get_relaxation("crown-ibp")(arch, p, lo, hi, C),
        )
    )
    (lb, ub), (ci_lb, ci_ub) = fn(params)
    assert np.all(lb >= ci_lb - 1e-5) and np.all(ub <= ci_ub + 1e-5)
    assert np.any(lb > ci_lb + 1e-3) or np.any(ub < ci_ub - 1e-3)


def test_alpha_crown_is_differentiable_in_the_parameters():
    arch, params, lo, hi, C = example_box("one_layer", 5, 0.1)
    fn = get_relaxation("alpha-crown")
    loss = jax.jit(jax.value_and_grad(lambda p: jnp.sum(certified_cross_entropy(fn(arch, p, lo, hi, C, steps=5)[0]))))
    value, grads = loss(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert np.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


# ------------------------------------------------------------------------------------ Lee et al. slopes


def diagonal_net():
    """x ∈ [-1, 1]² -> z = (x_1 + 0.5, x_2 - 0.5) -> ReLU -> logits (h_1 + h_2, 0).

    Neuron 1 has l = -0.5, u = 1.5 (min-area slope 1), neuron 2 has l = -1.5, u = 0.5 (slope 0). The
    margin lower bound ``min_x α_1 z_1 + α_2 z_2`` decreases with both slopes (the minimiser has
    ``z < 0``), so the certified loss increases with them and Lee et al. pick α = 0 for both.
    """
    arch = (Dense(2), ReLU(), Dense(2))
    params = [
        {"kernel": jnp.eye(2), "bias": jnp.array([0.5, -0.5])},
        {},
        {"kernel": jnp.array([[1.0, 0.0], [1.0, 0.0]]), "bias": jnp.zeros(2)},
    ]
    lo, hi = -jnp.ones((1, 2)), jnp.ones((1, 2))
    return arch, params, lo, hi, margin_spec(jnp.array([0]), 2)


@functools.partial(jax.jit, static_argnums=0)
def lee_setup(arch, params, lo, hi, C):
    """The pieces of "crown-lee": fixed bounds and relaxation, chosen slopes, bounds with them, registered
    "crown-lee" and "crown" bounds."""
    body, body_params, W, b = fold_spec(arch, params, C, lo.shape[0])
    bounds, lines, _ = fixed_intermediate(body, body_params, lo, hi, "crown")
    A, a = two_sided_rows(W, b)
    slopes = lee_slopes(body, body_params, bounds, lines, A, a, lo, hi, use_certified_loss=True)
    direct = split_two_sided(bounds_with_slopes(body, body_params, slopes, bounds, lines, A, a, lo, hi))
    registered = get_relaxation("crown-lee")(arch, params, lo, hi, C)
    crown = get_relaxation("crown")(arch, params, lo, hi, C)
    return bounds, lines, slopes, direct, registered, crown


def test_lee_slopes_follow_the_sign_of_the_loss_gradient():
    arch, params, lo, hi, C = diagonal_net()
    _, lines, slopes, _, (lee_lb, _), (crown_lb, _) = lee_setup(arch, params, lo, hi, C)
    np.testing.assert_array_equal(lines[1].lower_slope, [[1.0, 0.0]])  # min-area slopes
    # d lb / d α_j = z_j at the minimiser (< 0): the loss decreases with smaller slopes
    np.testing.assert_array_equal(slopes[1], [[0.0, 0.0]])
    np.testing.assert_allclose(lee_lb, [[0.0]], atol=1e-6)  # = min_x 0·z_1 + 0·z_2
    np.testing.assert_allclose(crown_lb, [[-0.5]], atol=1e-6)  # = min_x z_1 = -0.5


def test_lee_slopes_match_finite_differences_of_the_certified_loss():
    arch, params, lo, hi, C = example_box("mlp", 6, 0.15)
    bounds, lines, slopes, *_ = lee_setup(arch, params, lo, hi, C)
    adaptive = {i: ln.lower_slope for i, ln in lines.items()}

    @jax.jit
    def loss(s):
        body, body_params, W, b = fold_spec(arch, params, C, lo.shape[0])
        A, a = two_sided_rows(W, b)
        lb, _ = split_two_sided(bounds_with_slopes(body, body_params, s, bounds, lines, A, a, lo, hi))
        return jnp.sum(certified_cross_entropy(lb))

    base, delta, checked = float(loss(adaptive)), 1e-3, 0
    for i, (low, up) in bounds.items():
        crossing = np.argwhere(np.asarray((low < 0) & (up > 0)))
        for idx in crossing[:6]:
            step = np.zeros(low.shape, np.float32)
            step[tuple(idx)] = delta if float(adaptive[i][tuple(idx)]) < 1 else -delta
            moved = {**adaptive, i: adaptive[i] + step}
            slope = (float(loss(moved)) - base) / float(step[tuple(idx)])
            if abs(slope) > 1e-2:  # clear sign: α = 1 iff the loss decreases with α
                assert float(slopes[i][tuple(idx)]) == float(slope < 0)
                checked += 1
    assert checked >= 3


def test_lee_slopes_are_binary_and_bounds_use_them():
    arch, params, lo, hi, C = example_box("conv", 7, 0.1)
    _, _, slopes, direct, registered, _ = lee_setup(arch, params, lo, hi, C)
    assert all(bool(jnp.all((s == 0) | (s == 1))) for s in slopes.values())
    for x, y in zip(direct, registered, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- errors


def test_bad_options_give_clear_errors():
    arch, params, lo, hi, C = example_box("mlp", 0, 0.1)

    def trace(name, **options):
        fn = get_relaxation(name)
        return jax.eval_shape(lambda p: fn(arch, p, lo, hi, C, **options), params)

    with pytest.raises(ValueError, match="steps must be a non-negative"):
        trace("alpha-crown", steps=-1)
    with pytest.raises(ValueError, match="steps must be a non-negative"):
        trace("alpha-crown", steps=2.5)
    with pytest.raises(ValueError, match="lr must be > 0"):
        trace("alpha-crown", lr=0.0)
    with pytest.raises(ValueError, match="intermediate must be 'crown' or 'ibp'"):
        trace("alpha-crown", intermediate="lp")
    with pytest.raises(ValueError, match="intermediate must be 'crown' or 'ibp'"):
        trace("crown-lee", intermediate="exact")
    with pytest.raises(ValueError, match="unknown option"):
        trace("crown-lee", steps=3)
