"""CROWN-IBP: soundness, the β mix with IBP, exact and LP references, equality with CROWN on one ReLU layer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds import get_relaxation, ibp_bounds
from jaxcert.bounds.crown_ibp import ibp_preactivation_bounds
from jaxcert.bounds.exact import exact_bounds, lp_bounds
from tests.soundness import NET_NAMES
from tests.test_crown import assert_contains, example_box, net_arch, split_rows, with_identity_rows


@functools.cache
def crown_ibp_family(net: str):
    """Jitted ``(params, lo, hi, C, beta) -> {name: (lb, ub, logit_lb, logit_ub, pre-activation bounds)}``."""
    arch, _ = net_arch(net)
    crown_ibp, crown = get_relaxation("crown-ibp"), get_relaxation("crown")

    def fn(params, lo, hi, C, beta):
        spec = with_identity_rows(C)
        pre = ibp_preactivation_bounds(arch, params, lo, hi)
        return {
            "crown-ibp": (*split_rows(*crown_ibp(arch, params, lo, hi, spec), C), pre),
            "crown-ibp, traced beta": (*split_rows(*crown_ibp(arch, params, lo, hi, spec, beta=beta), C), pre),
            "ibp": (*split_rows(*ibp_bounds(arch, params, lo, hi, spec), C), pre),
            "crown": (*split_rows(*crown(arch, params, lo, hi, spec), C), pre),
        }

    return jax.jit(fn)


def family_bounds(net: str, seed: int, eps: float, beta: float = 0.5):
    arch, params, lo, hi, C = example_box(net, seed, eps)
    return arch, params, lo, hi, C, crown_ibp_family(net)(params, lo, hi, C, jnp.float32(beta))


@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3), beta=st.floats(0.0, 1.0))
def test_crown_ibp_is_sound_with_and_without_spec_for_every_beta(net, seed, eps, beta):
    _, params, lo, hi, C, bounds = family_bounds(net, seed, eps, beta)
    assert_contains(net, params, lo, hi, C, bounds, seed)
    # the traced mix is exactly β·CROWN-IBP + (1-β)·IBP
    for k in range(4):
        mixed = beta * bounds["crown-ibp"][k] + (1 - beta) * bounds["ibp"][k]
        np.testing.assert_allclose(bounds["crown-ibp, traced beta"][k], mixed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("traced", [False, True])
def test_crown_ibp_with_beta_zero_is_ibp(traced):
    arch, params, lo, hi, C = example_box("conv", 1, 0.1)
    if traced:
        lb, ub = family_bounds("conv", 1, 0.1, beta=0.0)[-1]["crown-ibp, traced beta"][:2]
    else:
        lb, ub = get_relaxation("crown-ibp")(arch, params, lo, hi, C, beta=0.0)
    ibp_lb, ibp_ub = family_bounds("conv", 1, 0.1)[-1]["ibp"][:2]
    np.testing.assert_allclose(lb, ibp_lb, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ub, ibp_ub, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("net", "eps"), [("mlp", 0.08), ("bn", 0.08), ("conv", 0.015)])
def test_crown_ibp_contains_the_exact_range_and_is_looser_than_the_lp_on_ibp_bounds(net, eps):
    arch, params, lo, hi, C, bounds = family_bounds(net, 2, eps)
    lb, ub, _, _, pre = bounds["crown-ibp"]
    exact_lb, exact_ub = exact_bounds(arch, params, lo, hi, C)
    lp_lb, lp_ub = lp_bounds(arch, params, lo, hi, C, intermediate=pre)
    assert np.all(lb <= exact_lb + 1e-4) and np.all(ub >= exact_ub - 1e-4)
    assert np.all(lp_lb >= lb - 1e-4) and np.all(lp_ub <= ub + 1e-4)  # CROWN-IBP is a feasible dual of the LP
    assert np.all(lp_lb <= exact_lb + 1e-4) and np.all(lp_ub >= exact_ub - 1e-4)


@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_crown_ibp_equals_crown_with_one_relu_layer(seed, eps):
    """The only ReLU layer's interval bounds are exact, so both relax it identically."""
    bounds = family_bounds("one_layer", seed, eps)[-1]
    for a, b in zip(bounds["crown-ibp"][:4], bounds["crown"][:4], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_crown_ibp_vmaps_over_parameter_samples_and_beta_like_a_loop():
    arch, params, lo, hi, C = example_box("bn", 3, 0.1)
    samples = [jax.tree_util.tree_map(lambda a, s=s: a * (1 + 0.1 * s), params) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *samples)
    betas = jnp.array([0.0, 0.4, 1.0])
    fn = jax.jit(lambda p, b: get_relaxation("crown-ibp")(arch, p, lo, hi, C, beta=b))

    def total(ps):  # vmapped bounds and the gradient of their sum, in one program (as in RGS)
        lbs, ubs = jax.vmap(fn)(ps, betas)
        return jnp.sum(lbs), (lbs, ubs)

    (_, (lbs, ubs)), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(stacked)
    for s, p in enumerate(samples):
        lb, ub = fn(p, betas[s])
        np.testing.assert_allclose(lbs[s], lb, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ubs[s], ub, rtol=1e-4, atol=1e-4)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_bad_options_give_clear_errors():
    arch, params, lo, hi, C = example_box("mlp", 0, 0.1)
    fn = get_relaxation("crown-ibp")

    def trace(**options):
        return jax.eval_shape(lambda p: fn(arch, p, lo, hi, C, **options), params)

    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        trace(beta=1.5)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        trace(beta=-0.1)
    with pytest.raises(ValueError, match="unknown option"):
        trace(betta=0.5)
    with pytest.raises(ValueError, match="unknown lower-slope rule"):
        trace(lower_slope="steep")
