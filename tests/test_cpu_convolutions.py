"""The CPU convolution rule (jaxcert.cpu_convolutions): which programs leave their convolutions to Eigen."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxcert import cpu_convolutions as cc
from jaxcert.nets import Conv, Dense, Flatten, ReLU, get_architecture
from jaxcert.nets.convolution import xla_conv2d

FASHION, CIFAR = (28, 28, 1), (32, 32, 3)


@pytest.fixture
def measured_jaxlib(monkeypatch):
    monkeypatch.setattr(cc, "jaxlib_measured", lambda: True)


def test_the_rule_picks_cnn7s_wide_layer_at_large_batches_only(measured_jaxlib):
    for dataset, shape in (("fashion_mnist", FASHION), ("cifar10", CIFAR)):
        cnn7 = get_architecture("cnn7", 10, dataset)
        assert cc.wide_convolutions(cnn7, shape) == [3]  # 64 -> 64 on the full-size map; 64 -> 128 s2 is 14x14
        assert cc.prefers_eigen(cnn7, shape, 128) and cc.prefers_eigen(cnn7, shape, 64)
        assert not cc.prefers_eigen(cnn7, shape, 32)
        assert cc.compiler_options(cnn7, shape, 128) == {cc.OPTION: cc.EIGEN_VALUE}
        assert cc.compiler_options(cnn7, shape, 16) == {}
        for narrow in ("cnn3", "cnn5", "mlp_14x14", "resnet_small"):
            assert not cc.prefers_eigen(get_architecture(narrow, 10, dataset), shape, 256), narrow
    # the thresholds themselves: channels in and out, and the output map (not the input map)
    wide = (Conv(64, 3, 1, 1), ReLU(), Conv(64, 3, 1, 1), ReLU(), Flatten(), Dense(10))
    assert cc.wide_convolutions(wide, (28, 28, 64)) == [0, 2]
    assert cc.wide_convolutions(wide, (27, 28, 64)) == []  # 756 pixels
    assert cc.wide_convolutions(wide, (28, 28, 63)) == [2]  # 63 input channels into the first
    strided = (Conv(64, 3, 2, 1), ReLU(), Flatten(), Dense(10))
    assert (
        cc.wide_convolutions(strided, (56, 56, 64)) == [0] and cc.wide_convolutions(strided, (54, 54, 64)) == []
    )  # 28² vs 27² outputs


def test_other_jaxlib_versions_keep_xlas_defaults(monkeypatch):
    monkeypatch.setattr(cc.importlib.metadata, "version", lambda name: "0.9.1")
    cnn7 = get_architecture("cnn7", 10, "fashion_mnist")
    assert not cc.jaxlib_measured() and cc.compiler_options(cnn7, FASHION, 128) == {}
    monkeypatch.setattr(cc.importlib.metadata, "version", lambda name: "0.10.7")
    assert cc.jaxlib_measured()


@pytest.mark.skipif(jax.default_backend() != "cpu" or not cc.jaxlib_measured(), reason="XLA:CPU of a measured jaxlib")
def test_the_option_leaves_the_convolution_to_eigen_with_the_same_values():
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 64))
    k = jax.random.normal(jax.random.key(1), (3, 3, 64, 64)) / 24
    program = jax.jit(lambda x, k: xla_conv2d(x, k, 1, 1)).lower(x, k)
    default, eigen = program.compile(), program.compile(compiler_options={cc.OPTION: cc.EIGEN_VALUE})
    assert "ynn" not in eigen.as_text().lower()
    np.testing.assert_allclose(eigen(x, k), default(x, k), rtol=1e-5, atol=1e-5)


def run_python(code: str, env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


@pytest.mark.skipif(not cc.jaxlib_measured(), reason="the rule applies to the jaxlib versions it was measured on")
def test_the_process_setting_is_made_before_jax_starts_and_never_over_the_users(tmp_path):
    """In a fresh process the rule appends its flag to XLA_FLAGS (and says so); a user's own choice of the
    option, a narrow network, a small batch and an already started backend leave XLA_FLAGS alone. The
    certification command reads the rule's inputs from the run's config.json."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"arch": "cnn7", "dataset": "fashion_mnist"}))
    code = f"""
import os
from jaxcert.cpu_convolutions import use_eigen_for_run_if_fresh as use
from jaxcert.certify import cpu_convolutions_for
print(repr(use("cnn3", "fashion_mnist", 256)), repr(use("cnn7", "spheres", 256)), repr(use("cnn7", "mnist", 32)))
print(cpu_convolutions_for({str(run)!r}, 128) is not None)
print(os.environ.get("XLA_FLAGS", ""))
import jax; jax.numpy.zeros(1).block_until_ready()
os.environ["XLA_FLAGS"] = ""
print(repr(use("cnn7", "fashion_mnist", 256)), repr(os.environ["XLA_FLAGS"]))
"""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    lines = run_python(code, env)
    assert lines[0] == "None None None"
    assert lines[1] == "True" and lines[2] == cc.EIGEN_FLAG
    assert lines[3] == "None ''"  # the backend had started
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution"
    lines = run_python(code, {**env, "XLA_FLAGS": mine})
    assert lines[1] == "False" and lines[2] == mine
