"""BatchNorm population statistics recomputed over the training set (jaxcert.train.bn_population)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import margin_lower_bounds
from jaxcert.nets import BatchNorm, forward, split_trainable
from jaxcert.train.batch_norm import batch_stats
from jaxcert.train.bn_population import merge_moments, population_stats

from .soundness import sample_box, tiny_params

N = 50  # not a multiple of the chunk: the last chunk is shorter


@pytest.fixture(scope="module")
def net():
    arch, in_shape, params = tiny_params("bn", seed=3)  # random running statistics, far from the data's
    x = jax.random.uniform(jax.random.key(7), (N, *in_shape))
    y = jnp.arange(N) % 3
    return arch, params, np.asarray(x), y


def bn_layers(arch):
    return [k for k, spec in enumerate(arch) if isinstance(spec, BatchNorm)]


def test_the_statistics_are_numpys_mean_and_variance_of_each_bn_layers_input(net):
    arch, params, x, _ = net
    new = population_stats(arch, params, x, chunk=16)
    assert len(bn_layers(arch)) == 2
    for k in bn_layers(arch):
        # the input of layer k under the net whose earlier BatchNorm layers use their population statistics
        h = np.asarray(forward(arch[:k], new[:k], jnp.asarray(x)), np.float64)
        axes = tuple(range(h.ndim - 1))
        np.testing.assert_allclose(new[k]["mean"], h.mean(axis=axes), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new[k]["var"], h.var(axis=axes), rtol=1e-5, atol=1e-6)  # biased, as the layer
        assert not np.allclose(new[k]["mean"], params[k]["mean"], atol=1e-2)  # the old statistics are gone
    for old, fresh in zip(params, new, strict=True):  # the other entries are untouched, the input unchanged
        for name in old:
            if name not in ("mean", "var"):
                assert fresh[name] is old[name]
    assert not np.allclose(params[bn_layers(arch)[0]]["mean"], new[bn_layers(arch)[0]]["mean"])


def test_they_equal_training_mode_on_the_whole_training_set_as_one_batch(net):
    arch, params, x, _ = net
    trainable, frozen = split_trainable(params)
    one_batch = batch_stats(arch, trainable, frozen, jnp.asarray(x))  # training mode, all N examples at once
    for chunk in (7, 16, N, 1000):
        new = population_stats(arch, params, x, chunk=chunk)
        for k in bn_layers(arch):
            np.testing.assert_allclose(new[k]["mean"], one_batch[k]["mean"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(new[k]["var"], one_batch[k]["var"], rtol=1e-5, atol=1e-6)
    # so the eval-mode net after the recomputation is the training-mode net on the whole set
    eval_mode = forward(arch, population_stats(arch, params, x), jnp.asarray(x))
    train_mode = forward(arch, [{**p, **f} for p, f in zip(trainable, one_batch, strict=True)], jnp.asarray(x))
    np.testing.assert_allclose(eval_mode, train_mode, rtol=1e-4, atol=1e-5)


def test_chan_merge_equals_the_moments_of_the_concatenation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, (5, 4)), rng.normal(-1.0, 0.5, (9, 4))
    moments = lambda v: (len(v), v.mean(0), ((v - v.mean(0)) ** 2).sum(0))
    n, mean, m2 = merge_moments(moments(a), moments(b))
    both = np.concatenate([a, b])
    assert n == 14
    np.testing.assert_allclose(mean, both.mean(0))
    np.testing.assert_allclose(m2 / n, both.var(0))


@pytest.mark.parametrize("relaxation", ["ibp", "crown-ibp", "deeppoly"])
def test_bounds_after_the_recomputation_are_sound_for_the_eval_mode_net(net, relaxation):
    arch, params, x, y = net
    new = population_stats(arch, params, x)
    eps = 0.1
    xs, ys = jnp.asarray(x[:6]), y[:6]
    lb = margin_lower_bounds(arch, new, xs, ys, eps, relaxation=relaxation)
    for b in range(len(xs)):
        lo, hi = jnp.clip(xs[b] - eps, 0.0, 1.0), jnp.clip(xs[b] + eps, 0.0, 1.0)
        logits = forward(arch, new, sample_box(jax.random.key(b), lo, hi, 200))
        margins = logits[:, ys[b]][:, None] - jnp.delete(logits, int(ys[b]), axis=1)  # z_y - z_j, j != y in order
        assert float(jnp.min(margins - lb[b])) >= -1e-4, relaxation


def test_a_net_without_batch_norm_is_returned_unchanged_and_empty_data_is_an_error(net):
    arch, params, x, _ = net
    plain, _, plain_params = tiny_params("mlp", seed=0)
    same = population_stats(plain, plain_params, np.zeros((3, 4, 1), np.float32))
    assert all(a[k] is b[k] for a, b in zip(same, plain_params, strict=True) for k in a)
    with pytest.raises(ValueError, match="at least one training example"):
        population_stats(arch, params, x[:0])
