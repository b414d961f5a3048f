"""GLS with PGPE (Sehnke et al., 2010) through ``evosax.algorithms.PGPE``.

The search distribution is ``N(μ, diag(σ²))`` over the flattened trainable weights. Each generation

    ask:      z_i ~ N(0, I), population = [μ + σ ⊙ z; μ - σ ⊙ z]        (antithetic)
    evaluate: f_j = L(θ_j) for every member, by ONE vmapped call          (fitness is minimised)
              (or ``chunk`` members at a time, :mod:`jaxcert.train.members`)
    tell:     shaped f̃ = centred ranks in [-1/2, 1/2],
              g_μ = Σ_i (f̃⁺_i - f̃⁻_i) σ ⊙ z_i / N,  μ ← optax optimiser step on g_μ,
              g_σ = Σ_i (f̃⁺_i + f̃⁻_i - 2 mean f̃)(σ²z_i² - σ²)/σ / N,
              σ ← clip(σ - η_σ g_σ, (1 ± δ) σ)            (σ fixed when η_σ = ``std_lr`` = 0)

is one jitted step. σ is one number for every weight or one per leaf (a tree, e.g. the relative
``σ_leaf = σ_rel · scale(leaf)`` of :mod:`jaxcert.train.sigma`); evosax keeps it as a vector over the
flattened weights. The whole objective (clean CE, certified CE and the L1 term alike) is evaluated at
each member ``θ_j``, so every term is smoothed. The mean optimiser should bound the step's norm
(ClipUp, :mod:`jaxcert.train.es_optimizers`); a per-coordinate normaliser such as Adam turns the noisy
rank gradient into a random walk of ≈ η per weight per generation.

Besides the population statistics (``loss`` = mean member fitness, ``loss_std``, ``best_fitness``) the
step logs the objective **at the mean** μ the generation started from (the network PGPE returns), on the
same batch: ``loss_at_mean``, ``clean_acc_at_mean``, ``cert_acc_at_mean``.

``TrainState.params`` is the current mean μ (unravelled), ``opt_state`` the evosax state; only
trainable leaves are searched over, BatchNorm statistics are updated from μ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, split_trainable
from jaxcert.train.batch_norm import update_running_stats
from jaxcert.train.losses import Objective, at_mean
from jaxcert.train.members import check_chunk, map_members
from jaxcert.train.sharding import check_divisible
from jaxcert.train.sigma import Sigma, broadcast_sigma, check_sigma, is_per_leaf
from jaxcert.train.state import Trainer, TrainState


def population_fitness(  # type: ignore[no-untyped-def]
    objective: Objective, chunk: int = 0, mesh: Mesh | None = None
):
    """``(population, frozen, x, y, step) -> (fitness (N,), aux)``: ``objective`` mapped over the members."""
    return map_members(objective, chunk, mesh)


def pgpe_trainer(
    arch: Arch,
    objective: Objective,
    params: LayerParams,
    optimizer: optax.GradientTransformation,
    *,
    sigma: Sigma,
    population: int,
    std_lr: float = 0.0,
    std_max_change: float = 0.2,
    chunk: int = 0,
    mesh: Mesh | None = None,
    bn_momentum: float = 0.1,
) -> Trainer:
    """PGPE on ``objective`` over the trainable leaves of ``params`` (the template, also the initial mean);
    ``optimizer`` updates the mean (:func:`jaxcert.train.es_optimizers.mean_optimizer`), ``sigma`` is one
    number or a tree of per-leaf values (:func:`jaxcert.train.sigma.relative_sigma`)."""
    from evosax.algorithms import PGPE  # here, not at import: importing it starts JAX's devices, which must
    # wait for jax.distributed.initialize in a multi-process run (jaxcert.train.distributed)

    if population < 2 or population % 2:
        raise ValueError(f"PGPE needs an even population >= 2 (antithetic pairs), got {population}")
    check_sigma(sigma)
    if std_lr < 0:
        raise ValueError(f"std_lr must be >= 0, got {std_lr}")
    check_divisible(population, mesh, "PGPE population")
    check_chunk(population, chunk, "PGPE population")
    template, _ = split_trainable(params)
    es = PGPE(population, solution=template, optimizer=optimizer)
    std_init = ravel_pytree(broadcast_sigma(sigma, template))[0] if is_per_leaf(sigma) else sigma
    es_params = es.default_params.replace(std_init=std_init, std_lr=std_lr, std_max_change=std_max_change)
    fitness_fn = population_fitness(objective, chunk, mesh)

    def init(params: LayerParams) -> TrainState:
        trainable, frozen = split_trainable(params)
        es_state = es.init(jax.random.key(0), trainable, es_params)  # PGPE's init draws nothing
        return TrainState(trainable, frozen, es_state, jnp.zeros((), jnp.int32))

    @jax.jit
    def step(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array):  # type: ignore[no-untyped-def]
        ask_key, tell_key = jax.random.split(key)
        members, es_state = es.ask(ask_key, state.opt_state, es_params)
        fitness, aux = fitness_fn(members, state.frozen, x, y, state.step)
        es_state, _ = es.tell(tell_key, members, fitness, es_state, es_params)
        mean = es.get_mean(es_state)
        frozen = update_running_stats(arch, state.params, state.frozen, x, bn_momentum)
        metrics = {
            "loss": jnp.mean(fitness),
            "loss_std": jnp.std(fitness),
            "best_fitness": jnp.min(fitness),
            "sigma_mean": jnp.mean(es_state.std),
            **jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), aux),
            **at_mean(objective, state.params, state.frozen, x, y, state.step),
        }
        return TrainState(mean, frozen, es_state, state.step + jnp.ones((), state.step.dtype)), metrics

    return Trainer(init, step)
