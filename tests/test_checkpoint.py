import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from jaxcert.nets import Dense, Flatten, ReLU, init_params
from jaxcert.train import certified_objective, pgpe_trainer, recipe_schedule
from jaxcert.train.checkpoint import Checkpoints
from jaxcert.train.configs import get_config, override
from jaxcert.train.logging import read_metrics
from jaxcert.train.loop import setup
from jaxcert.workflow import train
from tests.cli_runs import signal_on_line

ROOT = Path(__file__).resolve().parents[1]


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.slow
def test_pgpe_state_round_trips_and_only_the_last_checkpoints_are_kept(tmp_path):
    arch = (Flatten(), Dense(5), ReLU(), Dense(2))
    params = init_params(arch, (3,), seed=0)
    objective = certified_objective(arch, "ibp", recipe_schedule(0.05))
    trainer = pgpe_trainer(arch, objective, params, optax.adam(1e-2), sigma=0.05, population=4, std_lr=0.1)
    state = trainer.init(params)
    x = jax.random.uniform(jax.random.key(0), (8, 3))
    y = (x[:, 0] > 0.5).astype(np.int32)
    ckpt = Checkpoints(tmp_path / "ck", every=1, keep=2)
    saved = []
    for i in range(3):
        state, _ = trainer.step(state, x, y, jax.random.key(i))
        ckpt.save(state, {"config": {"i": i}})
        saved.append(state)
    assert sorted(int(p.name) for p in (tmp_path / "ck").iterdir() if p.name.isdigit()) == [2, 3]
    restored, meta = ckpt.restore(trainer.init(params))
    assert meta == {"config": {"i": 2}}
    assert_trees_equal(restored, saved[-1])
    assert int(restored.opt_state.generation_counter) == 3
    ckpt.close()
    assert Checkpoints(tmp_path / "empty", every=1).restore(state) is None
    with pytest.raises(ValueError):
        Checkpoints(tmp_path / "bad", every=0)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_with_nothing_lost(tmp_path):
    steps, every = 200, 40
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "jaxcert.train", "--config", "tiny", "--steps", str(steps), "--checkpoint-every",
           str(every), "--no-progress", "--no-eval", "--out", str(killed_dir)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    returncode, _ = signal_on_line(cmd, "checkpoint saved at step", signal.SIGKILL, cwd=ROOT, env=env)
    assert returncode == -signal.SIGKILL
    ckpt = Checkpoints(killed_dir / "checkpoints", every=every)
    interrupted_at = ckpt.latest_step()
    assert interrupted_at is not None and interrupted_at < steps, "the run must be killed before it finished"
    ckpt.close()

    resumed = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {interrupted_at}" in resumed.stdout

    config = override(get_config("tiny"), steps=steps, checkpoint_every=every, out=str(clean_dir))
    reference = train(config, progress=False, evaluate=False)["state"]
    parts = setup(config)
    template = parts.trainer.init(parts.params)
    final, meta = Checkpoints(killed_dir / "checkpoints", every=every).restore(template)
    assert int(final.step) == steps
    assert_trees_equal(final.params, reference.params)
    assert_trees_equal(final.opt_state, reference.opt_state)
    assert meta["config"]["steps"] == steps
    strip = lambda records: [{k: v for k, v in r.items() if k != "time"} for r in records]
    assert strip(read_metrics(killed_dir / "metrics.jsonl")) == strip(read_metrics(clean_dir / "metrics.jsonl"))

    # resuming with settings that change the trajectory is refused (before any step is compiled)
    with pytest.raises(ValueError, match="eps"):
        train(dataclasses.replace(config, eps=0.05), resume=True, progress=False, evaluate=False)
    with pytest.raises(ValueError, match="arch"):  # a clear error, not a failed restore into other shapes
        train(dataclasses.replace(config, arch="paradox_fc"), resume=True, progress=False, evaluate=False)
    assert json.loads((clean_dir / "config.json").read_text())["eps"] == config.eps
