"""Warm start (``init_from``): the exact weights of a saved run, architecture checked, any method."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxcert.nets import init_params
from jaxcert.nets.architectures import mlp
from jaxcert.train.configs import get_config
from jaxcert.train.loop import setup
from jaxcert.train.warm_start import load_run_params
from jaxcert.workflow import train

TINY = dataclasses.replace(get_config("tiny"), steps=4, checkpoint_every=2, log_every=2)


def assert_bitwise_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb) > 0
    for u, v in zip(la, lb, strict=True):
        assert np.asarray(u).dtype == np.asarray(v).dtype
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("source")
    result = train(dataclasses.replace(TINY, out=str(out)), progress=False, evaluate=False)
    return out, result["state"].full_params


@pytest.mark.slow
def test_warm_start_restores_the_saved_params_bitwise_for_any_method(saved_run):
    out, saved = saved_run
    template = setup(TINY).params
    assert_bitwise_equal(load_run_params(out, template), saved)
    for method in ("certified", "pgpe", "rgs"):
        params = setup(dataclasses.replace(TINY, method=method, population=4, init_from=str(out))).params
        assert_bitwise_equal(params, saved)
    fresh = jax.tree_util.tree_leaves(template)
    assert any(not np.array_equal(u, v) for u, v in zip(fresh, jax.tree_util.tree_leaves(saved), strict=True))


def test_an_architecture_mismatch_is_a_clear_one_line_error(saved_run, tmp_path):
    out, _ = saved_run
    other = init_params(mlp((50, 100), 2, "none"), (10,), seed=0)
    with pytest.raises(ValueError, match="architecture mismatch at layer") as info:
        load_run_params(out, other)
    assert "\n" not in str(info.value) and str(out) in str(info.value)
    deeper = init_params(mlp((100, 100, 100), 2, "none"), (10,), seed=0)
    with pytest.raises(ValueError, match=r"saved net has \d+ layers"):
        load_run_params(out, deeper)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_run_params(tmp_path / "nothing", other)


@pytest.mark.slow
def test_a_resumed_warm_started_run_restores_its_own_checkpoint(saved_run, tmp_path):
    source, saved = saved_run
    config = dataclasses.replace(TINY, method="pgpe", population=4, init_from=str(source), out=str(tmp_path / "ft"))
    first = train(config, progress=False, evaluate=False)["state"]
    resumed = train(config, resume=True, progress=False, evaluate=False)["state"]
    assert int(resumed.step) == config.steps
    assert_bitwise_equal(resumed.params, first.params)
    moved = jax.tree_util.tree_leaves(resumed.full_params)
    assert any(not np.array_equal(u, v) for u, v in zip(moved, jax.tree_util.tree_leaves(saved), strict=True))
