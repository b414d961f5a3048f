import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.analysis import add_scaled, bias_sweep_example, neuron_status, preactivation_bounds, unstable_counts
from jaxcert.bounds import input_box
from tests.soundness import NET_NAMES, TINY_NETS, sample_box, tiny_params

EX = bias_sweep_example()


@functools.cache
def jitted_counts(net, relaxation):
    arch, _ = TINY_NETS[net]
    return jax.jit(lambda params, x, eps: unstable_counts(arch, params, x, eps, relaxation=relaxation))


def observed_signs(arch, params, points):
    """For every ReLU layer: (some sample has a negative pre-activation, some has a positive one), per neuron."""
    out, h = [], points
    for spec, p in zip(arch, params, strict=True):
        if not spec.is_affine:
            out.append((jnp.any(h < 0, axis=0), jnp.any(h > 0, axis=0)))
        h = spec.apply(p, h)
    return out


@functools.cache
def soundness_check(net):
    """Jitted: the IBP status of one example, its bounds, and the signs seen at sampled inputs of the box."""
    arch, _ = TINY_NETS[net]

    def check(params, x, eps, key):
        status = unstable_counts(arch, params, x, eps)
        lo, hi = input_box(x, eps)
        signs = observed_signs(arch, params, sample_box(key, lo[0], hi[0], 128))
        return status, preactivation_bounds(arch, params, lo, hi), signs

    return jax.jit(check)


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_ibp_status_is_sound_for_sampled_activations(net, seed, eps):
    _, in_shape, params = tiny_params(net, seed)
    x = jax.random.uniform(jax.random.key(seed), (1, *in_shape))
    status, bounds, signs = soundness_check(net)(params, x, eps, jax.random.key(seed + 1))
    for k, ((neg, pos), (lb, ub)) in enumerate(zip(signs, bounds, strict=True)):
        seen_both = int(jnp.sum(neg & pos))
        assert int(status.unstable[k, 0]) >= seen_both  # a neuron seen on both sides must count as unstable
        assert not bool(jnp.any(pos & (ub[0] <= 0))), "a neuron counted inactive was positive"
        assert not bool(jnp.any(neg & (lb[0] >= 0))), "a neuron counted active was negative"
        total = status.unstable[k, 0] + status.active[k, 0] + status.inactive[k, 0]
        assert int(total) == lb[0].size


def test_counts_along_the_sweep_match_the_crossing_neuron():
    # h1 = x is always active; h2 = x + b crosses exactly while l < 0 < u (IBP is exact on one layer).
    # The counts are vmapped over the swept weights.
    ts = EX.ts(41)
    thetas = jax.vmap(lambda t: add_scaled(EX.params, t, EX.direction))(ts)
    status = jax.vmap(lambda p: unstable_counts(EX.arch, p, EX.x, EX.eps))(thetas)
    lo, hi = EX.crossing_bounds(ts)
    np.testing.assert_array_equal(status.unstable[:, 0, 0], ((lo < 0) & (hi > 0)).astype(int))
    np.testing.assert_array_equal(status.active[:, 0, 0], 1 + (lo >= 0))
    np.testing.assert_array_equal(status.inactive[:, 0, 0], (hi <= 0) & (lo < 0))


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_crown_intermediate_bounds_have_no_more_unstable_neurons_than_ibp(net):
    _, in_shape, params = tiny_params(net, 5)
    x = jax.random.uniform(jax.random.key(5), (3, *in_shape))
    ibp = jitted_counts(net, "ibp")(params, x, 0.2)
    crown = jitted_counts(net, "crown")(params, x, 0.2)
    crown_ibp = jitted_counts(net, "crown-ibp")(params, x, 0.2)
    assert bool(jnp.all(crown.unstable <= ibp.unstable))
    np.testing.assert_array_equal(crown_ibp.unstable, ibp.unstable)  # CROWN-IBP's intermediate bounds are IBP's
    assert int(jnp.sum(ibp.unstable)) > 0  # the check is not vacuous
    if net == "mlp":  # the second ReLU layer is where back-substitution can beat IBP
        assert int(jnp.sum(crown.unstable[1])) < int(jnp.sum(ibp.unstable[1]))


def test_neuron_status_counts_a_hand_made_layer():
    lower = jnp.array([[-1.0, 0.0, -2.0, 0.5, -0.5]])
    upper = jnp.array([[1.0, 2.0, 0.0, 1.0, -0.1]])
    status = neuron_status([(lower, upper)])
    assert status.unstable.tolist() == [[1]]
    assert status.active.tolist() == [[2]]
    assert status.inactive.tolist() == [[2]]
    assert float(status.unstable_fraction()[0, 0]) == pytest.approx(0.2)


def test_unstable_rejects_relaxations_without_exposed_intermediate_bounds():
    with pytest.raises(ValueError, match="intermediate bounds"):
        unstable_counts(EX.arch, EX.params, EX.x, EX.eps, relaxation="deepz")
    with pytest.raises(ValueError, match="no ReLU"):
        neuron_status([])
