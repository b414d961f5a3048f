"""``jaxcert.cpu_runtime.keep_freed_host_memory``: XLA:CPU reuses its large buffers' pages across calls."""

import subprocess
import sys

import pytest

#: A fresh process: optionally the setting, then a program with a 96 MB output called 3 times; prints the
#: minor page faults of the last call (about 23 000 when its output is faulted in afresh).
PROGRAM = """
import resource, sys
from jaxcert.cpu_runtime import keep_freed_host_memory
if sys.argv[1] == "keep":
    assert keep_freed_host_memory()
import jax, jax.numpy as jnp
x = jax.random.normal(jax.random.key(0), (1024, 96, 256))
double = jax.jit(lambda a: a * 2.0).lower(x).compile()
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = double(x).block_until_ready()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del y
print(faults)
"""


def faults_of_last_call(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_buffers_are_faulted_in_every_call_unless_freed_memory_is_kept():
    pages = 1024 * 96 * 256 * 4 // 4096
    assert faults_of_last_call("default") >= 0.9 * pages  # the cost this module removes
    assert faults_of_last_call("keep") < 0.01 * pages


def test_it_refuses_once_the_backend_has_started():
    import jax.numpy as jnp

    from jaxcert.cpu_runtime import keep_freed_host_memory

    jnp.ones(3).block_until_ready()
    with pytest.raises(RuntimeError, match="already started"):
        keep_freed_host_memory()
