"""GLS members' convolutions (jaxcert.nets.conv_members) and the CPU member schedule of IBP populations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.nets.convolution import conv2d, xla_conv2d
from jaxcert.train import member_schedule as ms

MEMBERS = 4
X = jax.random.uniform(jax.random.key(0), (3, 12, 12, 2))
XS = jax.random.uniform(jax.random.key(2), (MEMBERS, 3, 12, 12, 2))
KS = jax.random.normal(jax.random.key(1), (MEMBERS, 3, 3, 2, 5))
CASES = {
    "shared input": ((None, 0), (X, KS)),
    "both batched": ((0, 0), (XS, KS)),
    "input only": ((0, None), (XS, KS[0])),
}


def ours(x, k):
    return conv2d(x, k, 2, 1)


def reference(x, k):
    return xla_conv2d(x, k, 2, 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vmapped_convolutions_equal_one_per_member(case):
    in_axes, args = CASES[case]
    got = jax.jit(jax.vmap(ours, in_axes=in_axes))(*args)
    members = [
        reference(*(a[m] if ax == 0 else a for a, ax in zip(args, in_axes, strict=True))) for m in range(MEMBERS)
    ]
    np.testing.assert_allclose(got, jnp.stack(members), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU rule's programs")
def test_on_cpu_a_shared_input_is_one_ordinary_convolution_over_every_members_channels():
    shared = jax.jit(jax.vmap(ours, in_axes=(None, 0))).lower(X, KS).compile().as_text()
    assert f"f32[3,6,6,{MEMBERS * 5}]" in shared and "feature_group_count" not in shared  # 4 members × 5 channels
    assert shared.count(" convolution(") == 1


def test_gradients_and_nested_vmaps_are_unchanged():
    loss = lambda f: lambda k: jnp.sum(jnp.sin(f(X, k)))
    np.testing.assert_allclose(jax.vmap(jax.grad(loss(ours)))(KS), jax.vmap(jax.grad(loss(reference)))(KS), rtol=1e-5)
    tangent = jax.jvp(lambda k: ours(X, k), (KS[0],), (KS[1],))[1]
    np.testing.assert_allclose(tangent, reference(X, KS[1]), rtol=1e-5, atol=1e-6)
    nested = lambda f: jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(None, 0))
    np.testing.assert_allclose(jax.jit(nested(ours))(XS, KS), nested(reference)(XS, KS), rtol=1e-5, atol=1e-6)


def test_the_cpu_chunk_rule_pairs_forward_interval_populations_only():
    assert ms.cpu_chunk_for("pgpe", "certified", "ibp") == ms.CPU_INTERVAL_CHUNK == 2
    for method, objective, relaxation in (("pgpe", "certified", "crown-ibp"), ("pgpe", "sabr", "ibp"),
                                          ("rgs", "certified", "ibp"), ("pgpe", "certified", "deeppoly")):  # fmt: skip
        assert ms.cpu_chunk_for(method, objective, relaxation) == ms.CPU_CHUNK == 1
    assert ms.choose_chunk(32, "cpu", cpu_chunk=2)[0] == 2 and ms.choose_chunk(32, "cpu")[0] == 1
    assert ms.choose_chunk(15, "cpu", cpu_chunk=2)[0] == 1  # the largest divisor not above the rule's chunk
    assert "pairs share the first convolution" in ms.describe(32, 0, "cpu", cpu_chunk=2)
    assert ms.choose_chunk(32, "gpu", cpu_chunk=2)[0] == 32  # other backends: their own rule


def test_an_ibp_population_in_pairs_equals_single_members():
    from jaxcert.bounds import certified_cross_entropy, margin_lower_bounds
    from jaxcert.nets import get_architecture, init_params
    from jaxcert.train import gaussian_noise, perturb
    from jaxcert.train.members import map_members

    arch = get_architecture("cnn3", 10, "fashion_mnist")
    params = init_params(arch, (28, 28, 1), seed=0)
    x, y = jax.random.uniform(jax.random.key(3), (8, 28, 28, 1)), jnp.arange(8) % 10
    members = perturb(params, gaussian_noise(jax.random.key(4), params, 8), 0.01)
    loss = lambda p, x, y: jnp.mean(certified_cross_entropy(margin_lower_bounds(arch, p, x, y, 0.1)))
    pairs = jax.jit(map_members(loss, cpu_chunk=2))(members, x, y)
    singles = jax.jit(map_members(loss, chunk=1))(members, x, y)
    np.testing.assert_allclose(pairs, singles, rtol=1e-5)
