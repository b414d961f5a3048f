"""Sharded == unsharded: RGS samples, the PGPE population (whole, or in chunks of 4; with each mean optimiser,
ClipUp, SGD and Adam, and a per-leaf sigma) and the data batch split over 4 host devices.

The device count must be fixed before jax is imported, so the comparison runs in a subprocess."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxcert.train.sharding import check_divisible

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jaxcert.nets import Dense, Flatten, Normalize, ReLU, init_params
    from jaxcert.train import certified_objective, certified_trainer, pgpe_trainer, recipe_schedule, rgs_trainer
    from jaxcert.train.sharding import device_mesh, shard_batch

    assert len(jax.devices()) == 4, jax.devices()
    arch = (Normalize((0.5,), (0.3,)), Flatten(), Dense(12), ReLU(), Dense(3))
    params = init_params(arch, (2, 2, 1), seed=0)
    x = jax.random.uniform(jax.random.key(1), (16, 2, 2, 1))
    y = (jnp.mean(x, axis=(1, 2, 3)) > 0.5).astype(jnp.int32)
    schedule = recipe_schedule(0.03, kappa_final=0.0)
    objective = certified_objective(arch, "ibp", schedule)
    mesh = device_mesh("samples", 4)

    def run(trainer, data_mesh=None, steps=1):
        state = trainer.init(params)
        xs, ys = shard_batch(data_mesh, x, y)
        for i in range(steps):
            state, metrics = trainer.step(state, xs, ys, jax.random.key(i))
        return state, metrics

    def max_diff(a, b):
        pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
        return max(float(jnp.max(jnp.abs(u - v))) for u, v in pairs)

    out = {}
    kw = dict(sigma=0.05, samples=8)
    plain, _ = run(rgs_trainer(arch, objective, optax.adam(1e-2), **kw))
    sharded_trainer = rgs_trainer(arch, objective, optax.adam(1e-2), mesh=mesh, **kw)
    sharded, m = run(sharded_trainer)
    out["rgs"] = max_diff(plain.params, sharded.params)
    hlo = sharded_trainer.step.lower(sharded_trainer.init(params), x, y, jax.random.key(0)).as_text()
    out["rgs_constrained"] = "sdy.sharding_constraint" in hlo and '{"samples"}' in hlo
    chunked, _ = run(rgs_trainer(arch, objective, optax.adam(1e-2), mesh=mesh, chunk=4, **kw))
    out["rgs_chunked"] = max_diff(plain.params, chunked.params)
    kw = dict(sigma=0.05, population=8)
    plain, _ = run(pgpe_trainer(arch, objective, params, optax.adam(1e-2), **kw))
    sharded_trainer = pgpe_trainer(arch, objective, params, optax.adam(1e-2), mesh=mesh, **kw)
    sharded, m = run(sharded_trainer)
    out["pgpe"] = max_diff(plain.params, sharded.params)
    hlo = sharded_trainer.step.lower(sharded_trainer.init(params), x, y, jax.random.key(0)).as_text()
    out["pgpe_constrained"] = "sdy.sharding_constraint" in hlo and '{"samples"}' in hlo
    chunked, _ = run(pgpe_trainer(arch, objective, params, optax.adam(1e-2), mesh=mesh, chunk=4, **kw))
    out["pgpe_chunked"] = max_diff(plain.params, chunked.params)
    out["pgpe_moved"] = max_diff(plain.params, [{k: v for k, v in p.items()} for p in params])
    # every PGPE mean optimiser (ClipUp, SGD, Adam), per-leaf relative sigma and weight decay, sharded == plain
    from jaxcert.train.es_optimizers import mean_optimizer
    from jaxcert.train.sigma import relative_sigma
    trainable = [{k: v for k, v in p.items()} for p in params]
    kw = dict(sigma=relative_sigma(trainable, 0.1), population=8)
    for name in ("clipup", "sgd", "adam"):
        opt = lambda: mean_optimizer(name, 1e-2, base_lr=1e-2, weight_decay=1e-3)
        plain, _ = run(pgpe_trainer(arch, objective, params, opt(), **kw), steps=2)
        sharded, _ = run(pgpe_trainer(arch, objective, params, opt(), mesh=mesh, chunk=4, **kw), steps=2)
        out[f"pgpe_{name}"] = max_diff(plain.params, sharded.params)
        out[f"pgpe_{name}_moved"] = max_diff(plain.params, trainable)
    trainer = certified_trainer(arch, "ibp", optax.adam(1e-2), schedule)
    plain, _ = run(trainer)
    sharded, _ = run(trainer, data_mesh=device_mesh("batch", 4))
    out["batch"] = max_diff(plain.params, sharded.params)
    print("RESULT", json.dumps(out))
    """
)


@pytest.mark.slow
def test_sharded_gls_and_batch_equal_unsharded():
    # 4 host devices; backend optimisation off: compiling dominates this test and equality does not need it
    flags = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    diffs = json.loads(line[len("RESULT ") :])
    assert diffs["pgpe_moved"] > 1e-4  # the comparison is not vacuous
    assert diffs["rgs_constrained"] and diffs["pgpe_constrained"]  # the sample axis is split over the devices
    for name in ("rgs", "rgs_chunked", "pgpe", "pgpe_chunked", "batch", "pgpe_clipup", "pgpe_sgd", "pgpe_adam"):
        assert diffs[name] < 1e-5, (name, diffs)
    for name in ("clipup", "sgd", "adam"):
        assert diffs[f"pgpe_{name}_moved"] > 1e-4, (name, diffs)


def test_sample_count_must_divide_over_the_devices():
    class FakeMesh:
        size = 4

    check_divisible(8, FakeMesh(), "population")
    with pytest.raises(ValueError, match="divisible"):
        check_divisible(6, FakeMesh(), "population")
