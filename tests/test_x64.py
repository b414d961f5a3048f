"""With ``jax_enable_x64`` the forward pass and every relaxation run on CNN3 and keep the input's dtype.

The flag is global to a process, so the checks run in a subprocess (nothing leaks into the other tests)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jaxcert.bounds import margin_lower_bounds, relaxation_names
    from jaxcert.nets import forward, get_architecture, init_params

    arch = get_architecture("cnn3", dataset="fashion_mnist")
    params = init_params(arch, (28, 28, 1))
    x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1))
    y = np.array([3, 7])
    out = {"x64": bool(jax.config.jax_enable_x64)}
    for dtype in ("float32", "float64"):
        xd = jnp.asarray(x, dtype)
        logits = forward(arch, params, xd)
        margins = logits[jnp.arange(2), y][:, None] - logits  # z_y - z_j, j = y included (0)
        out[dtype] = {"forward": str(logits.dtype)}
        for name in relaxation_names():
            lb = margin_lower_bounds(arch, params, xd, jnp.asarray(y), 0.01, relaxation=name)
            others = np.stack([np.delete(np.asarray(margins[b]), y[b]) for b in range(2)])
            finite = bool(np.all(np.isfinite(np.asarray(lb))))
            sound = bool(np.all(np.asarray(lb) <= others + 1e-5))
            out[dtype][name] = [str(lb.dtype), finite, sound]
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_forward_and_every_relaxation_keep_the_input_dtype_under_x64():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["x64"] is True
    for dtype in ("float32", "float64"):
        checks = result[dtype]
        assert checks.pop("forward") == dtype
        assert len(checks) >= 15  # every registered relaxation ran
        for name, (lb_dtype, finite, sound) in checks.items():
            assert (lb_dtype, finite, sound) == (dtype, True, True), name
