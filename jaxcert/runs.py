"""Reading a training run back from its output folder: ``load_run(run_dir) -> (arch, params, config)``.

A run folder (``python -m jaxcert.train``'s ``--out``) holds ``config.json`` and ``checkpoints/``; the
newest readable checkpoint is restored (an unreadable newer one is skipped with a warning), into a
template built from the config, so the parameters have exactly the trained shapes.
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
    parameters (trainable and BatchNorm statistics) that ``forward`` and the bounds take."""
    config = run_config(run_dir)
    from jaxcert.nets import get_architecture
    from jaxcert.train.checkpoint import Checkpoints
    from jaxcert.train.loop import initial_params, make_trainer

    in_shape, num_classes, normalization, input_range = data_shape(config)
    arch = get_architecture(config.arch, num_classes, normalization)
    params = initial_params(config, arch, in_shape)
    template = make_trainer(config, arch, params, input_range).init(params)
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{run_dir} holds no checkpoints (no {directory})")
    checkpoints = Checkpoints(directory, every=config.checkpoint_every, keep=config.keep_checkpoints)
    try:
        restored = checkpoints.restore_valid(template, discard=False)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{directory} holds no readable checkpoint")
    return arch, restored[0].full_params, config


def load_test_split(config: TrainConfig, *, data_dir: str | None = None, limit: int | None = None) -> Dataset:
    """The run's test split: the full split of an image data set (first ``limit`` examples when given), or
    for ``spheres`` the synthetic test set of the training loop (``config.test_limit`` or 512 points)."""
    if config.dataset == "spheres":
        from jaxcert.train.loop import load_data

        test = load_data(config)[1]
        return test if limit is None else test.take(limit)
    from jaxcert.data import load_dataset

    return load_dataset(
        config.dataset, "test", data_dir=data_dir or config.data_dir, limit=limit, download=config.download
    )
