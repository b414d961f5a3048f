"""Chunked member evaluation (``lax.map`` over groups of a vmap) computes what one vmap / a Python loop does."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcert.nets import Dense, Flatten, Normalize, ReLU, init_params, split_trainable
from jaxcert.train import certified_objective, gaussian_noise, perturb, pgpe_trainer, recipe_schedule, rgs_trainer
from jaxcert.train.configs import TrainConfig
from jaxcert.train.members import map_members, population_size

ARCH = (Normalize((0.5,), (0.3,)), Flatten(), Dense(8), ReLU(), Dense(3))
OBJECTIVE = certified_objective(ARCH, "crown-ibp", recipe_schedule(0.05, kappa_final=0.0))
POPULATION = 8


@pytest.fixture(scope="module")
def problem():
    params = init_params(ARCH, (2, 2, 1), seed=0)
    trainable, frozen = split_trainable(params)
    x = jax.random.uniform(jax.random.key(1), (12, 2, 2, 1))
    y = jnp.arange(12) % 3
    members = perturb(trainable, gaussian_noise(jax.random.key(2), trainable, POPULATION), 0.1)
    return params, trainable, frozen, x, y, members


@pytest.mark.slow
@pytest.mark.parametrize(("chunk", "unroll"), [(0, False), (1, False), (2, False), (4, False), (8, False), (16, False),
                                               (1, True), (4, True)])  # fmt: skip
def test_every_chunking_equals_a_python_loop_over_members(problem, chunk, unroll):
    _, _, frozen, x, y, members = problem
    fn = jax.value_and_grad(OBJECTIVE, has_aux=True)
    (losses, aux), grads = jax.jit(map_members(fn, chunk, unroll=unroll))(members, frozen, x, y, 7)
    assert losses.shape == (POPULATION,)
    single = jax.jit(fn)
    for i in range(POPULATION):
        (li, ai), gi = single(jax.tree_util.tree_map(lambda a, i=i: a[i], members), frozen, x, y, 7)
        np.testing.assert_allclose(losses[i], li, rtol=1e-5)
        np.testing.assert_allclose(aux["cert_loss"][i], ai["cert_loss"], rtol=1e-5)
        for u, v in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(gi), strict=True):
            np.testing.assert_allclose(u[i], v, rtol=1e-4, atol=1e-6)
    assert float(jnp.std(losses)) > 0  # the members differ: a broadcast bug would not pass


def test_chunked_program_is_a_loop_over_groups_unless_unrolled(problem):
    _, _, frozen, x, y, members = problem
    hlo = jax.jit(map_members(OBJECTIVE, 2)).lower(members, frozen, x, y, 0).as_text()
    assert "while" in hlo  # lax.map over the 4 groups, not an unrolled or fully vmapped program
    assert "while" not in jax.jit(map_members(OBJECTIVE, 0)).lower(members, frozen, x, y, 0).as_text()
    unrolled = jax.jit(map_members(OBJECTIVE, 2, unroll=True)).lower(members, frozen, x, y, 0).as_text()
    assert "while" not in unrolled  # four copies of the group's program instead of a loop
    assert unrolled.count("dot_general") == 4 * jax.jit(map_members(OBJECTIVE, 8)).lower(
        members, frozen, x, y, 0
    ).as_text().count("dot_general")


@pytest.mark.slow
def test_chunked_rgs_and_pgpe_steps_equal_the_full_vmap(problem):
    params, _, _, x, y, _ = problem
    key = jax.random.key(3)
    for make in (
        lambda c, u: rgs_trainer(ARCH, OBJECTIVE, optax.adam(1e-2), sigma=0.05, samples=4, chunk=c, unroll=u),
        lambda c, u: pgpe_trainer(
            ARCH, OBJECTIVE, params, optax.adam(1e-2), sigma=0.05, population=8, chunk=c, unroll=u
        ),
    ):
        full = make(0, False)
        a, ma = full.step(full.init(params), x, y, key)
        for chunked in (make(2, False), make(2, True)):
            b, mb = chunked.step(chunked.init(params), x, y, key)
            np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
            for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True):
                np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_bad_chunks_are_rejected_clearly(problem):
    params, _, frozen, x, y, members = problem
    with pytest.raises(ValueError, match="member chunk must be >= 0"):
        map_members(OBJECTIVE, -1)
    with pytest.raises(ValueError, match="population \\(8\\) must be a multiple of the member chunk \\(3\\)"):
        map_members(OBJECTIVE, 3)(members, frozen, x, y, 0)
    with pytest.raises(ValueError, match="RGS samples \\(4\\) must be a multiple"):
        rgs_trainer(ARCH, OBJECTIVE, optax.adam(1e-2), sigma=0.05, samples=4, chunk=3)
    with pytest.raises(ValueError, match="PGPE population \\(8\\) must be a multiple"):
        pgpe_trainer(ARCH, OBJECTIVE, params, optax.adam(1e-2), sigma=0.05, population=8, chunk=3)
    with pytest.raises(ValueError, match="population \\(16\\) must be a multiple of member_chunk"):
        TrainConfig(method="pgpe", population=16, member_chunk=5)
    with pytest.raises(ValueError, match="member_chunk must be >= 0"):
        TrainConfig(member_chunk=-2)
    assert dataclasses.replace(TrainConfig(method="certified"), member_chunk=5).member_chunk == 5  # unused: fine
    with pytest.raises(ValueError, match="leading"):
        population_size([jnp.zeros((4, 2)), jnp.zeros((3, 2))])
