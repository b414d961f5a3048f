"""GLS with Randomised Gradient Smoothing (RGS).

The Gaussian-smoothed loss ``L_σ(θ) = E_{z~N(0,I)} L(θ + σz)`` has gradient ``E_z ∇L(θ + σz)``,
estimated with ``k`` samples,

    ĝ = (1/k) Σ_i ∇L(θ + σ z_i),

where the ``k`` perturbed gradients are computed by ONE ``jax.vmap``-ped call (the sample axis can be
sharded over devices, or evaluated ``chunk`` samples at a time: :mod:`jaxcert.train.members`), and ``ĝ``
is fed to any optax optimiser. Only trainable leaves are perturbed.
With ``antithetic=True`` the samples come in pairs ``±z_i`` (``k`` even).

σ is one number for every weight or one per leaf (a tree, e.g. the relative ``σ_leaf = σ_rel · scale(leaf)``
of :mod:`jaxcert.train.sigma`). The whole objective is evaluated at ``θ + σ z_i``, so every term of it is
smoothed: the clean cross-entropy, the certified cross-entropy and the L1 penalty alike. ``loss`` is the
mean over the samples (the smoothed loss); ``loss_at_mean``, ``clean_acc_at_mean`` and ``cert_acc_at_mean``
are the objective at θ itself (the network being trained), on the same batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams
from jaxcert.train.gradient import GradientEstimator, gradient_trainer
from jaxcert.train.losses import Objective, at_mean
from jaxcert.train.members import check_chunk, map_members
from jaxcert.train.sharding import check_divisible
from jaxcert.train.sigma import Sigma, check_sigma, is_per_leaf
from jaxcert.train.state import Trainer


def gaussian_noise(key: jax.Array, tree: LayerParams, samples: int, *, antithetic: bool = False) -> LayerParams:
    """``samples`` standard normal draws shaped like ``tree`` (leading axis = sample); ``[z; -z]`` if antithetic.

    One draw of shape (samples, number of weights), unravelled into the tree: a single PRNG call
    compiles several times faster on XLA:CPU than one call per leaf.
    """
    flat, unravel = ravel_pytree(tree)
    n = samples // 2 if antithetic else samples
    z = jax.random.normal(key, (n, flat.size), flat.dtype)
    if antithetic:
        z = jnp.concatenate([z, -z])
    return jax.vmap(unravel)(z)


def perturb(trainable: LayerParams, noise: LayerParams, sigma: Sigma) -> LayerParams:
    """``θ + σ z_i`` for every sample ``i`` (leading axis of ``noise``); ``sigma`` one number or one per leaf."""
    if is_per_leaf(sigma):
        return jax.tree_util.tree_map(lambda p, z, s: p[None] + s * z, trainable, noise, sigma)
    return jax.tree_util.tree_map(lambda p, z: p[None] + sigma * z, trainable, noise)


def smoothed_gradient(
    objective: Objective,
    *,
    sigma: Sigma,
    samples: int,
    antithetic: bool = False,
    chunk: int = 0,
    mesh: Mesh | None = None,
) -> GradientEstimator:
    """The RGS estimator ``(trainable, frozen, x, y, step, key) -> (mean loss, ĝ, mean aux)``."""
    if samples < 1:
        raise ValueError(f"RGS needs samples >= 1, got {samples}")
    if antithetic and samples % 2:
        raise ValueError(f"antithetic RGS needs an even number of samples, got {samples}")
    check_sigma(sigma, strict=False)  # σ may be traced (e.g. a schedule value): not checked then
    check_divisible(samples, mesh, "RGS samples")
    check_chunk(samples, chunk, "RGS samples")
    per_sample = map_members(jax.value_and_grad(objective, has_aux=True), chunk, mesh)

    def estimate(trainable, frozen, x, y, step, key):  # type: ignore[no-untyped-def]
        noise = gaussian_noise(key, trainable, samples, antithetic=antithetic)
        (losses, aux), grads = per_sample(perturb(trainable, noise, sigma), frozen, x, y, step)
        mean = lambda t: jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), t)
        extra = {"loss_std": jnp.std(losses), **at_mean(objective, trainable, frozen, x, y, step)}
        return jnp.mean(losses), mean(grads), {**mean(aux), **extra}

    return estimate


def rgs_trainer(
    arch: Arch,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    sigma: Sigma,
    samples: int,
    antithetic: bool = False,
    chunk: int = 0,
    mesh: Mesh | None = None,
    bn_momentum: float = 0.1,
) -> Trainer:
    """RGS: any optax ``optimizer`` on the smoothed gradient of ``objective``."""
    estimator = smoothed_gradient(
        objective, sigma=sigma, samples=samples, antithetic=antithetic, chunk=chunk, mesh=mesh
    )
    return gradient_trainer(arch, estimator, optimizer, bn_momentum=bn_momentum)
