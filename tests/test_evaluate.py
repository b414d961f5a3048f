import functools

import jax
import numpy as np
import optax
import pytest

from jaxcert.bounds import cross_entropy
from jaxcert.data import Dataset, concentric_spheres
from jaxcert.evaluate import accuracy, evaluate, evaluate_per_example
from jaxcert.nets import forward, init_params, mlp
from tests.soundness import tiny_params

N = 64  # examples per evaluation data set; one batch shape everywhere so compiled functions are reused


@functools.cache
def spheres_net():
    """A one-hidden-layer MLP trained (full batch, Adam) on concentric spheres, and a held-out set."""
    train, test = concentric_spheres(200, dim=10, seed=0), concentric_spheres(N, dim=10, seed=1)
    arch = mlp((16,), num_classes=2, dataset="none")
    params = init_params(arch, (10,), seed=0)
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: cross_entropy(forward(arch, p, train.x), train.y).mean())(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(200):
        params, state = step(params, state)
    return arch, params, test


@functools.cache
def image_net():
    """The tiny random conv net of tests/soundness.py on random images in [0, 1] (input boxes get clipped)."""
    arch, in_shape, params = tiny_params("conv", 2)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(N, *in_shape)).astype(np.float32)
    y = np.asarray(np.argmax(forward(arch, params, x), axis=-1))
    y = np.where(rng.uniform(size=N) < 0.8, y, (y + 1) % 3)  # 80% correctly labelled
    return arch, params, Dataset(x, y, 3, "random_images", normalization="none")


SETTINGS = {"spheres": (spheres_net, 0.03), "images": (image_net, 0.1)}
#: The evaluation options most tests share (one compilation): two relaxations, a full batch of N.
COMMON = {"relaxations": ("ibp", "box"), "batch_size": N}


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_certified_implies_pgd_robust_implies_clean_per_example(setting):
    make, eps = SETTINGS[setting]
    arch, params, ds = make()
    per = evaluate_per_example(arch, params, ds, eps, **COMMON)
    clean, robust, cert = per["clean_acc"], per["pgd_acc"], per["cert_acc/ibp"]
    assert clean.shape == robust.shape == cert.shape == (N,)
    assert not np.any(cert & ~robust), "a certified example was broken by PGD"
    assert not np.any(robust & ~clean)
    # the chosen ε separates the three notions: the checks above are not vacuous
    assert cert.sum() > 0 and cert.sum() < robust.sum() < clean.sum()


def test_evaluate_returns_the_means_of_the_per_example_results():
    arch, params, ds = spheres_net()
    result = evaluate(arch, params, ds, 0.03, **COMMON)
    per = evaluate_per_example(arch, params, ds, 0.03, **COMMON)
    assert set(result) == {"clean_acc", "pgd_acc", "cert_acc/ibp", "cert_acc/box"}
    for key, value in result.items():
        assert isinstance(value, float) and value == pytest.approx(per[key].mean())
    assert result["clean_acc"] == pytest.approx(accuracy(arch, params, ds.x, ds.y))


def test_at_zero_eps_all_three_accuracies_coincide():
    arch, params, ds = spheres_net()
    per = evaluate_per_example(arch, params, ds, 0.0, **COMMON)
    np.testing.assert_array_equal(per["clean_acc"], per["pgd_acc"])
    np.testing.assert_array_equal(per["clean_acc"], per["cert_acc/ibp"])
    np.testing.assert_array_equal(per["clean_acc"], per["cert_acc/box"])


def test_results_do_not_depend_on_batch_size_or_padding():
    arch, params, ds = spheres_net()
    full = evaluate_per_example(arch, params, ds, 0.03, **COMMON)
    padded = evaluate_per_example(arch, params, ds, 0.03, **{**COMMON, "batch_size": 24})  # 24 + 24 + 16 (padded)
    for key in ("clean_acc", "cert_acc/ibp", "cert_acc/box"):  # PGD's random starts depend on the batch split
        np.testing.assert_array_equal(full[key], padded[key])
    assert len(padded["pgd_acc"]) == N
    assert accuracy(arch, params, ds.x, ds.y, batch_size=24) == pytest.approx(full["clean_acc"].mean())


def test_limit_evaluates_the_first_examples():
    arch, params, ds = spheres_net()
    per = evaluate_per_example(arch, params, ds, 0.03, **{**COMMON, "batch_size": 24}, limit=40)
    full = evaluate_per_example(arch, params, ds, 0.03, **COMMON)
    assert len(per["clean_acc"]) == 40
    np.testing.assert_array_equal(per["cert_acc/ibp"], full["cert_acc/ibp"][:40])


@pytest.mark.slow
def test_l2_evaluation_is_consistent_with_the_box_certificate():
    arch, params, ds = spheres_net()
    per = evaluate_per_example(arch, params, ds, 0.06, norm="l2", **COMMON)
    assert not np.any(per["cert_acc/ibp"] & ~per["pgd_acc"])
    assert not np.any(per["pgd_acc"] & ~per["clean_acc"])
    assert per["pgd_acc"].sum() < per["clean_acc"].sum()  # the ℓ2 attack does break some examples


def test_accuracy_matches_argmax():
    arch, params, ds = image_net()
    expected = np.mean(np.argmax(np.asarray(forward(arch, params, ds.x)), axis=-1) == ds.y)
    assert accuracy(arch, params, ds.x, ds.y) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"relaxations": ("nope",)}, "unknown relaxation"),
        ({"norm": "l1"}, "norm"),
        ({"limit": 0}, "empty"),
        ({"batch_size": 0}, "batch_size"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_evaluate_rejects_bad_arguments(kwargs, message):
    arch, params, ds = spheres_net()
    eps = kwargs.pop("eps", 0.1)
    with pytest.raises(ValueError, match=message):
        evaluate(arch, params, ds, eps, **kwargs)


def test_evaluation_traces_every_matmul_and_convolution_at_highest_precision():
    """Certificates must not rest on TF32/bf16 products (the GPU/TPU default for float32 matmuls)."""
    import jax.numpy as jnp

    from jaxcert.evaluate import batch_results

    arch, params, ds = image_net()
    options = {"relaxations": ("ibp", "crown"), "norm": "linf", "steps": 1, "restarts": 1, "lo": 0.0, "hi": 1.0}
    text = batch_results.lower(arch, params, ds.x[:4], ds.y[:4], jnp.float32(0.1), jax.random.key(0), **options)
    text = text.as_text()
    products = [ln for ln in text.splitlines() if "dot_general" in ln or "convolution" in ln]
    assert len(products) >= 4  # forward, PGD gradient, bounds: the check is not vacuous
    assert all("HIGHEST" in ln for ln in products), [ln for ln in products if "HIGHEST" not in ln][:2]
