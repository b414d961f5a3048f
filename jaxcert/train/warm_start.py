"""Warm start: the network weights of a saved run, to fine-tune from (any method, e.g. PGPE from IBP).

``load_run_params(run_dir, template)`` reads ``run_dir/config.json`` (the run must have been written by
``jaxcert.train``) and the latest orbax checkpoint under ``run_dir/checkpoints``
(:class:`jaxcert.train.checkpoint.Checkpoints`), and returns the saved trainable weights merged with the
saved BatchNorm statistics, exactly as saved (bitwise). Only the weights are taken: the optimiser state,
step counter and RNG start afresh. ``template`` (the freshly initialised params of the new run) fixes
the expected architecture; any difference in layers, leaf names, shapes or dtypes is a ``ValueError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxcert.nets.network import LayerParams, merge
from jaxcert.train.checkpoint import Checkpoints


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a saved run (``FileNotFoundError`` if there is none)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"cannot warm-start from {run_dir}: no config.json (not a jaxcert.train run directory)")
    return json.loads(path.read_text())


def _describe(params: Any) -> list[dict[str, tuple[tuple[int, ...], str]]]:
    """Per layer, ``{leaf: (shape, dtype)}`` (of arrays or of ``jax.ShapeDtypeStruct`` s)."""

    def shape_dtype(v: Any) -> tuple[tuple[int, ...], str]:
        if isinstance(v, jax.ShapeDtypeStruct):
            return tuple(v.shape), str(v.dtype)
        return tuple(np.shape(v)), str(jnp.asarray(v).dtype)

    return [{k: shape_dtype(v) for k, v in layer.items()} for layer in params]


def check_same_architecture(saved: LayerParams, template: Any, source: str, *, action: str = "warm-start from") -> None:
    """``ValueError`` (one line, "cannot <action> <source>: ...") naming the first layer/leaf where ``saved``
    and ``template`` (params, or their ``jax.ShapeDtypeStruct`` s) differ."""
    got, want = _describe(saved), _describe(template)
    if len(got) != len(want):
        raise ValueError(
            f"cannot {action} {source}: architecture mismatch: saved net has {len(got)} layers, "
            f"this run's has {len(want)}"
        )
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g != w:
            raise ValueError(f"cannot {action} {source}: architecture mismatch at layer {i}: saved {g}, expected {w}")


def load_run_params(run_dir: str | Path, template: LayerParams, *, step: int | None = None) -> LayerParams:
    """The full params (trainable + BatchNorm statistics) of checkpoint ``step`` (default: the latest) of
    the run in ``run_dir``, checked against ``template``'s architecture."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot warm-start from {run_dir}: no checkpoints directory")
    checkpoints = Checkpoints(directory, every=1, keep=10**6)  # read only: nothing is saved or deleted
    try:
        step = checkpoints.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"cannot warm-start from {run_dir}: it has no checkpoint")
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        state = checkpoints.manager.restore(step, args=args)["state"]
    finally:
        checkpoints.close()
    source = f"{run_dir} (arch {config.get('arch')!r}, step {step})"
    saved = merge([dict(p) for p in state["params"]], [dict(p) for p in state["frozen"]])
    check_same_architecture(saved, template, source)
    return jax.tree_util.tree_map(jnp.asarray, saved)
