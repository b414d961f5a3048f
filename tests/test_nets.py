import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxcert.nets import (
    ARCHITECTURES,
    Dense,
    Flatten,
    Network,
    forward,
    get_architecture,
    init_params,
    load_params,
    merge,
    params_of,
    pure_apply,
    shapes,
    split_trainable,
    trainable_mask,
)
from jaxcert.nets.layers import Normalize

IN_SHAPES = {"cnn7": (32, 32, 3), "cnn7_bn": (32, 32, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architectures_build_and_nnx_matches_pure_forward(name):
    dataset = "cifar10" if name.startswith("cnn7") else "fashion_mnist"
    in_shape = IN_SHAPES.get(name, (28, 28, 1))
    arch = get_architecture(name, dataset=dataset)
    model = Network(arch, in_shape, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, *in_shape))
    logits = model(x)
    assert logits.shape == (2, 10)
    assert shapes(arch, in_shape)[-1] == (10,)
    assert jnp.allclose(logits, forward(arch, params_of(model), x), atol=1e-4)


def test_spec_architectures_have_the_documented_layers():
    cnn3 = get_architecture("cnn3")
    assert shapes(cnn3, (28, 28, 1))[1:6] == [(28, 28, 1), (14, 14, 16), (14, 14, 16), (7, 7, 32), (7, 7, 32)]
    fc = get_architecture("paradox_fc")
    assert [s.features for s in fc if isinstance(s, Dense)] == [400, 200, 100, 100, 10]
    assert isinstance(cnn3[0], Normalize) and cnn3[0].mean == (0.2861,)


@pytest.mark.slow
def test_pure_apply_goes_through_split_merge_and_matches_forward_for_new_params():
    arch = get_architecture("paradox_conv")
    model = Network(arch, (28, 28, 1), rngs=nnx.Rngs(0))
    apply, params = pure_apply(model)
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, params)
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    assert jnp.allclose(jax.jit(apply)(doubled, x), forward(arch, doubled, x), atol=1e-4)
    assert not jnp.allclose(apply(doubled, x), model(x))
    load_params(model, doubled)
    assert jnp.allclose(model(x), forward(arch, doubled, x), atol=1e-4)


@pytest.mark.slow
def test_forward_vmaps_over_parameter_samples():
    arch = get_architecture("mlp_small")
    params = init_params(arch, (28, 28, 1))
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, -a, 0.5 * a]), params)
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    out = jax.jit(jax.vmap(forward, in_axes=(None, 0, None)), static_argnums=0)(arch, stacked, x)
    for i in range(3):
        one = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
        assert jnp.allclose(out[i], forward(arch, one, x), atol=1e-5)


@pytest.mark.slow
def test_batchnorm_statistics_are_not_trainable():
    arch = get_architecture("cnn7_bn", dataset="cifar10")
    params = init_params(arch, (32, 32, 3))
    mask = trainable_mask(params)
    flags = {k: v for layer in mask for k, v in layer.items()}
    assert flags["mean"] is False and flags["var"] is False and flags["scale"] is True
    trainable, frozen = split_trainable(params)
    assert all("mean" not in p for p in trainable)
    assert jax.tree_util.tree_structure(merge(trainable, frozen)) == jax.tree_util.tree_structure(params)


def test_bad_architectures_give_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture"):
        get_architecture("resnet1000")
    with pytest.raises(ValueError, match="flat input"):
        shapes((Dense(3),), (4, 4, 1))
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize((0.0,), (0.0,))
    with pytest.raises(ValueError, match="layer entries"):
        forward((Flatten(), Dense(3)), [{}], jnp.zeros((1, 4)))


@pytest.mark.parametrize("relaxation", ["ibp", "crown"])
def test_the_14x14_net_on_raw_images_bounds_the_196_input_net_on_downsampled_images(relaxation):
    from jaxcert.bounds import output_bounds

    pooled = get_architecture("mlp_14x14")
    assert [s.features for s in pooled if isinstance(s, Dense)] == [32, 32, 10]
    params = init_params(pooled, (28, 28, 1), seed=3)
    flat = (pooled[0], Flatten(), *pooled[3:])  # the same net without the pooling, on 14×14 inputs
    flat_params = [params[0], params[2], *params[3:]]
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1), minval=0.1, maxval=0.9)
    small = x.reshape(4, 14, 2, 14, 2, 1).mean(axis=(2, 4))
    assert jnp.allclose(forward(pooled, params, x), forward(flat, flat_params, small), atol=1e-5)
    # the ε-box of the raw image maps exactly onto the ε-box of the downsampled one: the same bounds
    lb, ub = output_bounds(pooled, params, x, 0.05, relaxation=relaxation)
    lb_small, ub_small = output_bounds(flat, flat_params, small, 0.05, relaxation=relaxation)
    assert jnp.allclose(lb, lb_small, atol=1e-4) and jnp.allclose(ub, ub_small, atol=1e-4)
    assert float(jnp.min(ub - lb)) > 0.01  # a real box, not a point
