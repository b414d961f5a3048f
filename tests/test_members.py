"""Chunked member evaluation (``lax.map`` over groups of a vmap) computes what one vmap / a Python loop does."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcert.nets import Dense, Flatten, Normalize, ReLU, init_params, split_trainable
from jaxcert.train import (
    certified_objective,
    gaussian_noise,
    member_schedule,
    perturb,
    pgpe_trainer,
    recipe_schedule,
    rgs_trainer,
)
from jaxcert.train.configs import TrainConfig
from jaxcert.train.member_schedule import CPU_CHUNK, choose_chunk, describe
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
@pytest.mark.parametrize("chunk", [0, 1, 2, 4, 8])
def test_every_chunking_equals_a_python_loop_over_members(problem, chunk):
    _, _, frozen, x, y, members = problem
    fn = jax.value_and_grad(OBJECTIVE, has_aux=True)
    (losses, aux), grads = jax.jit(map_members(fn, chunk))(members, frozen, x, y, 7)
    assert losses.shape == (POPULATION,)
    single = jax.jit(fn)
    for i in range(POPULATION):
        (li, ai), gi = single(jax.tree_util.tree_map(lambda a, i=i: a[i], members), frozen, x, y, 7)
        np.testing.assert_allclose(losses[i], li, rtol=1e-5)
        np.testing.assert_allclose(aux["cert_loss"][i], ai["cert_loss"], rtol=1e-5)
        for u, v in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(gi), strict=True):
            np.testing.assert_allclose(u[i], v, rtol=1e-4, atol=1e-6)
    assert float(jnp.std(losses)) > 0  # the members differ: a broadcast bug would not pass


def test_chunked_program_is_a_loop_over_groups_and_a_whole_chunk_one_vmap(problem):
    _, _, frozen, x, y, members = problem
    hlo = jax.jit(map_members(OBJECTIVE, 2)).lower(members, frozen, x, y, 0).as_text()
    assert "while" in hlo  # lax.map over the 4 groups, not a fully vmapped program
    assert "while" not in jax.jit(map_members(OBJECTIVE, POPULATION)).lower(members, frozen, x, y, 0).as_text()


@pytest.mark.slow
def test_chunked_rgs_and_pgpe_steps_equal_the_full_vmap(problem):
    params, _, _, x, y, _ = problem
    key = jax.random.key(3)
    for size, make in (
        (4, lambda c: rgs_trainer(ARCH, OBJECTIVE, optax.adam(1e-2), sigma=0.05, samples=4, chunk=c)),
        (8, lambda c: pgpe_trainer(ARCH, OBJECTIVE, params, optax.adam(1e-2), sigma=0.05, population=8, chunk=c)),
    ):
        full = make(size)  # a chunk of the whole population: one vmap
        a, ma = full.step(full.init(params), x, y, key)
        for chunked in (make(2), make(0)):  # lax.map over pairs; the default rule
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
    with pytest.raises(ValueError, match="member_unroll was removed"):
        TrainConfig(method="pgpe", member_chunk=4, member_unroll=True)
    assert dataclasses.replace(TrainConfig(method="certified"), member_chunk=5).member_chunk == 5  # unused: fine
    with pytest.raises(ValueError, match="leading"):
        population_size([jnp.zeros((4, 2)), jnp.zeros((3, 2))])


def test_the_default_rule_chunks_on_cpu_and_vmaps_on_accelerators(problem, monkeypatch):
    _, _, frozen, x, y, members = problem
    assert choose_chunk(32, "cpu")[0] == CPU_CHUNK
    assert choose_chunk(6, "cpu")[0] == max(k for k in (1, 2, 3, 6) if k <= CPU_CHUNK)  # a divisor of N
    assert "lax.map" in choose_chunk(32, "cpu")[1]
    assert choose_chunk(32, "gpu") == (32, "one vmap (gpu)")  # no estimate: one vmap
    estimate = lambda k: 100.0 * k  # bytes grow with the members per step
    assert choose_chunk(32, "tpu", estimate, memory_limit=3200.0)[0] == 32
    assert choose_chunk(32, "gpu", estimate, memory_limit=1000.0)[0] == 8  # the largest divisor that fits
    assert choose_chunk(6, "gpu", estimate, memory_limit=250.0)[0] == 2
    chunk, why = choose_chunk(4, "gpu", estimate, memory_limit=50.0)
    assert chunk == 1 and "even one member" in why
    with pytest.raises(ValueError, match=">= 1 member"):
        choose_chunk(0, "cpu")
    # gradients (RGS) too: lax.map on CPU whatever XLA's estimate, since their bodies' convolutions are fast
    assert choose_chunk(4, "cpu", estimate, memory_limit=1e9)[0] == CPU_CHUNK

    # map_members(chunk=0) asks the rule with this backend's name, and on an accelerator XLA's real estimate
    for backend, expect_loop in (("cpu", CPU_CHUNK < POPULATION), ("gpu", False), ("tpu", False)):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        hlo = jax.jit(map_members(OBJECTIVE)).lower(members, frozen, x, y, 0).as_text()
        assert ("while" in hlo) == expect_loop, backend
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    grad = jax.value_and_grad(OBJECTIVE, has_aux=True)
    for memory in (1e15, 1.0):  # RGS-style gradients on CPU: lax.map over single members, whatever the memory
        monkeypatch.setattr(member_schedule, "device_memory_bytes", lambda m=memory: m)
        hlo = jax.jit(map_members(grad)).lower(members, frozen, x, y, 0).as_text()
        assert ("while" in hlo) == (CPU_CHUNK < POPULATION), memory
    assert "while" not in jax.jit(map_members(grad, POPULATION)).lower(members, frozen, x, y, 0).as_text()  # wins
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(member_schedule, "device_memory_bytes", lambda: 1e15)
    assert "while" not in jax.jit(map_members(OBJECTIVE)).lower(members, frozen, x, y, 0).as_text()  # fits
    monkeypatch.setattr(member_schedule, "device_memory_bytes", lambda: 1.0)
    assert "while" in jax.jit(map_members(OBJECTIVE)).lower(members, frozen, x, y, 0).as_text()  # too large: chunks


@pytest.mark.slow
def test_gradients_mapped_over_members_on_cpu_equal_the_vmap(problem, monkeypatch):
    _, _, frozen, x, y, members = problem
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    grad = jax.value_and_grad(OBJECTIVE, has_aux=True)
    (la, _), ga = jax.jit(map_members(grad, POPULATION))(members, frozen, x, y, 3)
    (lb, _), gb = jax.jit(map_members(grad))(members, frozen, x, y, 3)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_the_default_schedule_is_described_in_one_line():
    assert describe(32, 0, "cpu").startswith(f"lax.map over chunks of {CPU_CHUNK}")
    assert "--member-chunk overrides" in describe(32, 0, "cpu")
    assert describe(32, 0, "gpu").startswith("one vmap unless XLA's memory estimate exceeds")
    assert describe(4, 0, "cpu").startswith(f"lax.map over chunks of {CPU_CHUNK}")
    assert describe(32, 4) == "lax.map over chunks of 4 (member_chunk=4)"
    assert describe(32, 32) == "one vmap (member_chunk=32)"
