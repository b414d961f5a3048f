"""Reading a training run back from its output folder: ``load_run(run_dir) -> (arch, params, config)``.

A run folder (``python -m jaxcert.train``'s ``--out``) holds ``config.json`` and ``checkpoints/``; the
newest readable checkpoint is restored (an unreadable newer one is skipped with a warning) as it was saved,
and its parameters are checked against the architecture's shapes; no trainer (optimiser, PGPE state) is
built, and the training loop is not imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxcert.data.dataset import Dataset, dataset_info
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams
from jaxcert.train.configs import TrainConfig

#: Input shape, classes and normalisation of the synthetic spheres problem the training loop uses.
SPHERES = ((10,), 2, "none", (float("-inf"), float("inf")))


def run_config(run_dir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` saved in ``run_dir/config.json`` (clear errors for a missing folder or file)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileNotFoundError(f"{str(run_dir)!r} is a file, not a run folder (the --out folder of a training run)")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run folder: no config.json in it")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return TrainConfig.from_dict(data)


def data_shape(config: TrainConfig) -> tuple[tuple[int, ...], int, str, tuple[float, float]]:
    """``(in_shape, num_classes, normalization, input_range)`` of the run's data set, without loading it."""
    if config.dataset == "spheres":
        return SPHERES
    info = dataset_info(config.dataset)
    return info.in_shape, info.num_classes, info.normalization, (0.0, 1.0)


def load_run(run_dir: str | Path) -> tuple[Arch, LayerParams, TrainConfig]:
    """``(arch, params, config)`` of the newest readable checkpoint in ``run_dir``; ``params`` are the full
    parameters (trainable and BatchNorm statistics) that ``forward`` and the bounds take.

    No trainer is built: the checkpoint's state is read as saved and its parameters are checked against
    the shapes and dtypes of the architecture's initialisation (``jax.eval_shape`` of
    :func:`jaxcert.nets.init_params`: nothing is computed)."""
    config = run_config(run_dir)
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{run_dir} holds no checkpoints (no {directory})")
    import jax

    from jaxcert.nets import get_architecture, init_params
    from jaxcert.train.checkpoint import Checkpoints

    in_shape, num_classes, normalization, _ = data_shape(config)
    arch = get_architecture(config.arch, num_classes, normalization)
    shapes = jax.eval_shape(lambda: init_params(arch, tuple(in_shape), config.seed))
    checkpoints = Checkpoints(directory, every=config.checkpoint_every, keep=config.keep_checkpoints)
    try:
        restored = checkpoints.restore_valid(None, discard=False)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{directory} holds no readable checkpoint")
    state = restored[0]
    return arch, saved_params(state, shapes, f"{run_dir} (step {int(state['step'])})"), config


def saved_params(state: dict[str, Any], shapes: LayerParams, source: str) -> LayerParams:
    """The full params of a checkpoint's state as saved (its ``params`` merged with its ``frozen``
    BatchNorm statistics), as arrays; ``ValueError`` naming the first layer or leaf whose shape or dtype
    differs from ``shapes`` (the architecture's initialisation)."""
    import jax.numpy as jnp

    from jaxcert.nets.network import merge
    from jaxcert.train.warm_start import check_same_architecture

    saved = merge([dict(p) for p in state["params"]], [dict(p) for p in state["frozen"]])
    params = [{k: jnp.asarray(v) for k, v in layer.items()} for layer in saved]
    check_same_architecture(params, shapes, source, action="restore")
    return params


def load_test_split(config: TrainConfig, *, data_dir: str | None = None, limit: int | None = None) -> Dataset:
    """The run's test split: the full split of an image data set (first ``limit`` examples when given), or
    for ``spheres`` the synthetic test set of the training loop (``config.test_limit`` or 512 points)."""
    if config.dataset == "spheres":
        from jaxcert.train.run_data import load_data

        test = load_data(config)[1]
        return test if limit is None else test.take(limit)
    from jaxcert.data import load_dataset

    return load_dataset(
        config.dataset, "test", data_dir=data_dir or config.data_dir, limit=limit, download=config.download
    )
