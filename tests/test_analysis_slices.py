import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.analysis import (
    add_scaled,
    bias_sweep_example,
    certified_loss_fn,
    filter_normalize,
    gaussian_samples,
    largest_jump,
    loss_along_line,
    loss_on_plane,
    random_direction,
    smoothed_loss,
    smoothed_loss_along_line,
    smoothed_loss_on_plane,
)
from jaxcert.nets import BatchNorm, Conv, Dense
from tests.soundness import TINY_NETS, tiny_params

EX = bias_sweep_example()
TS = EX.ts(201)
KEY = jax.random.key(0)


@functools.cache
def crown_loss():
    return certified_loss_fn(EX.arch, EX.x, EX.y, EX.eps, relaxation="crown")


def half_square(params):
    """½‖θ‖² over every leaf (running statistics included)."""
    return 0.5 * sum(jnp.sum(a**2) for a in jax.tree.leaves(params))


@functools.cache
def tiny_net_loss(net):
    arch, in_shape, _ = tiny_params(net, 0)
    x = jax.random.uniform(jax.random.key(1), (2, *in_shape))
    return certified_loss_fn(arch, x, jnp.array([0, 2]), 0.05, relaxation="ibp")


def test_smoothing_with_zero_sigma_is_the_loss():
    raw = loss_along_line(crown_loss(), EX.params, EX.direction, TS)
    smoothed = smoothed_loss_along_line(crown_loss(), EX.params, EX.direction, TS, KEY, jnp.array([0.0, 0.05]))
    assert smoothed.shape == (2, TS.shape[0])
    np.testing.assert_allclose(smoothed[0], raw, rtol=1e-6, atol=1e-7)
    assert not np.allclose(smoothed[1], raw, atol=1e-4)


def test_smoothed_crown_loss_has_no_jump():
    raw = loss_along_line(crown_loss(), EX.params, EX.direction, TS)
    smoothed = smoothed_loss_along_line(crown_loss(), EX.params, EX.direction, TS, KEY, jnp.array([0.0, 0.05]))
    raw_jump, smooth_jump = largest_jump(TS, raw), largest_jump(TS, smoothed[1])
    assert float(raw_jump.relative) > 10.0
    assert float(smooth_jump.relative) < 5.0
    assert float(smooth_jump.size) < float(raw_jump.size) / 3


def test_smoothed_loss_of_a_quadratic_is_its_gaussian_mean():
    # E ½‖θ + σz‖² = ½‖θ‖² + ½σ² E‖z‖²; with the estimator's own samples the identity is exact, and the
    # sample mean of ‖z‖² is close to the number of trainable weights (running statistics do not move).
    arch, _, params = tiny_params("bn", 0)
    sigmas = jnp.array([0.0, 0.1, 0.3])
    n = 16
    got = smoothed_loss(half_square, params, KEY, sigmas, n_samples=n)
    z = gaussian_samples(KEY, params, n, antithetic=True)
    z_sq = jnp.mean(sum(jnp.sum(a.reshape(n, -1) ** 2, axis=1) for a in jax.tree.leaves(z)))
    np.testing.assert_allclose(got, half_square(params) + 0.5 * sigmas**2 * z_sq, rtol=1e-5)
    bn = next(i for i, spec in enumerate(arch) if isinstance(spec, BatchNorm))
    assert not np.any(np.asarray(z[bn]["mean"])) and not np.any(np.asarray(z[bn]["var"]))
    trainable = sum(a.size for p in params for k, a in p.items() if k not in ("mean", "var"))
    assert abs(float(z_sq) / trainable - 1.0) < 0.2


def test_antithetic_samples_cancel_odd_terms():
    # a linear loss: the antithetic estimate of E L(θ + σz) is exactly L(θ)
    _, _, params = tiny_params("mlp", 0)
    linear = lambda p: sum(jnp.sum(a) for a in jax.tree.leaves(p))
    got = smoothed_loss(linear, params, KEY, jnp.array([0.5]), n_samples=8)
    np.testing.assert_allclose(got, linear(params), rtol=1e-5)


def test_plane_slice_contains_the_line_slices():
    d1, d2 = EX.direction, random_direction(jax.random.key(3), EX.params, normalize=False)
    ss = jnp.array([-0.2, 0.0, 0.3])
    plane = loss_on_plane(crown_loss(), EX.params, (d1, d2), TS, ss)
    assert plane.shape == (TS.shape[0], 3)
    np.testing.assert_allclose(plane[:, 1], loss_along_line(crown_loss(), EX.params, d1, TS), rtol=1e-6)
    shifted = add_scaled(EX.params, 0.3, d2)
    np.testing.assert_allclose(plane[:, 2], loss_along_line(crown_loss(), shifted, d1, TS), rtol=1e-5, atol=1e-6)


def test_smoothed_plane_with_zero_sigma_is_the_plane():
    d1, d2 = EX.direction, random_direction(jax.random.key(4), EX.params, normalize=False)
    ts, ss = TS[::10], jnp.linspace(-0.1, 0.1, 3)
    plane = loss_on_plane(crown_loss(), EX.params, (d1, d2), ts, ss)
    smoothed = smoothed_loss_on_plane(crown_loss(), EX.params, (d1, d2), ts, ss, KEY, jnp.array([0.0, 0.1]), 8)
    assert smoothed.shape == (2, ts.shape[0], 3)
    np.testing.assert_allclose(smoothed[0], plane, rtol=1e-6, atol=1e-7)


def test_chunked_evaluation_matches_one_vmap():
    a = loss_along_line(crown_loss(), EX.params, EX.direction, TS)
    b = loss_along_line(crown_loss(), EX.params, EX.direction, TS, batch_size=16)
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("net", sorted(TINY_NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_filter_normalised_direction_matches_filter_norms(net, seed):
    arch, _, params = tiny_params(net, seed)
    d = random_direction(jax.random.key(seed), params)
    for spec, p, q in zip(arch, params, d, strict=True):
        if isinstance(spec, Dense | Conv):
            axes = tuple(range(p["kernel"].ndim - 1))
            filter_norm = lambda k: jnp.sqrt(jnp.sum(k**2, axis=axes))
            np.testing.assert_allclose(filter_norm(q["kernel"]), filter_norm(p["kernel"]), rtol=1e-4)
            assert not np.allclose(q["kernel"], p["kernel"])  # a random direction, not θ itself
        for k, v in q.items():
            if v.ndim == 1:  # biases, BatchNorm scale/bias (ignored) and running statistics (frozen)
                assert not np.any(np.asarray(v)), (spec, k)


def test_filter_normalize_keeps_biases_on_request():
    arch, _, params = tiny_params("bn", 0)
    raw = random_direction(KEY, params, normalize=False)
    d = filter_normalize(raw, params, ignore_biases=False)
    for spec, p, q in zip(arch, params, d, strict=True):
        if "bias" in p:
            np.testing.assert_allclose(jnp.linalg.norm(q["bias"]), jnp.linalg.norm(p["bias"]), rtol=1e-5)
        if isinstance(spec, BatchNorm):
            assert not np.any(np.asarray(q["mean"])) and not np.any(np.asarray(q["var"]))


def test_slices_reject_bad_arguments():
    with pytest.raises(ValueError, match="sigmas must be >= 0"):
        smoothed_loss(half_square, EX.params, KEY, jnp.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="ts must be"):
        loss_along_line(crown_loss(), EX.params, EX.direction, jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="even number"):
        smoothed_loss(half_square, EX.params, KEY, 0.1, n_samples=3)
    with pytest.raises(ValueError, match="unknown relaxation"):
        certified_loss_fn(EX.arch, EX.x, EX.y, EX.eps, relaxation="nope")


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_smoothed_certified_loss_on_tiny_nets_is_finite_and_continuous_in_sigma(net):
    _, _, params = tiny_params(net, 0)
    sigmas = jnp.array([0.0, 1e-4, 0.05])
    got = smoothed_loss(tiny_net_loss(net), params, KEY, sigmas, n_samples=8)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[0], jax.jit(tiny_net_loss(net))(params), rtol=1e-6)
    np.testing.assert_allclose(got[1], got[0], rtol=1e-2)
