import jax
import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds import input_box, interval_layers, margin_spec, output_bounds
from jaxcert.nets import forward
from tests.soundness import NET_NAMES, assert_sound, tiny_params


@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_ibp_is_sound(net, seed, eps):
    assert_sound("ibp", net, seed, eps)


@pytest.mark.parametrize("net", NET_NAMES)
def test_ibp_logits_without_spec_are_sound(net):
    assert_sound("ibp", net, 7, 0.1, use_spec=False)


@pytest.mark.parametrize("net", NET_NAMES)
def test_ibp_is_exact_at_zero_eps(net):
    arch, in_shape, params = tiny_params(net, 3)
    x = jax.random.uniform(jax.random.key(0), (2, *in_shape))
    lb, ub = output_bounds(arch, params, x, 0.0, relaxation="ibp")
    z = forward(arch, params, x)
    assert jnp.allclose(lb, z, atol=1e-5) and jnp.allclose(ub, z, atol=1e-5)


@pytest.mark.slow
def test_ibp_intermediate_bounds_contain_activations():
    arch, in_shape, params = tiny_params("conv", 1)
    x = jax.random.uniform(jax.random.key(2), (1, *in_shape))
    lo, hi = input_box(x, 0.05)
    layers = interval_layers(arch, params, lo, hi)
    pts = lo + jax.random.uniform(jax.random.key(3), (64, *in_shape)) * (hi - lo)
    h = pts
    for (lo_k, hi_k), spec, p in zip(layers[1:], arch, params, strict=True):
        h = spec.apply(p, h)
        assert bool(jnp.all(h >= lo_k - 1e-5)) and bool(jnp.all(h <= hi_k + 1e-5))


def test_folding_the_spec_is_tighter_than_subtracting_logit_bounds():
    arch, in_shape, params = tiny_params("mlp", 4)
    x = jax.random.uniform(jax.random.key(5), (4, *in_shape))
    y = jnp.array([0, 1, 2, 0])
    C = margin_spec(y, 3)
    lb_folded, _ = output_bounds(arch, params, x, 0.1, C=C)
    lz, uz = output_bounds(arch, params, x, 0.1)
    lb_naive = jnp.take_along_axis(lz, y[:, None], 1) - jnp.einsum("bkn,bn->bk", (C < 0) * 1.0, uz)
    assert bool(jnp.all(lb_folded >= lb_naive - 1e-5))
    assert bool(jnp.any(lb_folded > lb_naive + 1e-4))
