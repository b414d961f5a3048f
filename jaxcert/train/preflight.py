"""Checks of a training command before any set-up work (imports no JAX, touches no file).

:func:`preflight` rejects, each with a one-line ``ValueError`` / ``FileNotFoundError``, what the training
loop would otherwise only find after seconds of set-up (importing JAX, loading the data) or after training:
an unknown relaxation, architecture or data set, a missing ``--data-dir`` or ``--init-from`` folder, an
``--out`` that is a file, and a folder holding checkpoints of another config. The names are listed here
(the registries live in modules that import JAX); tests keep them equal to the registries.
"""

from __future__ import annotations

from pathlib import Path

from jaxcert.train.configs import TrainConfig
from jaxcert.train.resume import has_checkpoints, resume_refusal, saved_config

#: The relaxations of :func:`jaxcert.bounds.relaxation_names`.
RELAXATIONS = (
    "alpha-crown", "alpha-crown-full", "box", "crown", "crown-given", "crown-ibp", "crown-lee", "crown-one",
    "crown-one-c", "crown-parallel", "crown-soft", "crown-zero", "crown-zero-c", "deeppoly", "deepz", "hbox", "ibp",
)  # fmt: skip
#: The architectures of :data:`jaxcert.nets.ARCHITECTURES`.
ARCHITECTURES = (
    "cnn3", "cnn5", "cnn7", "cnn7_bn", "mlp_14x14", "mlp_small", "paradox_conv", "paradox_fc", "resnet_small",
    "resnet_tiny",
)  # fmt: skip
#: The image data sets of :data:`jaxcert.data.DATASETS` and the training loop's synthetic ``spheres``.
DATASETS = ("cifar10", "fashion_mnist", "mnist", "spheres")


def _check_name(what: str, name: str, known: tuple[str, ...]) -> None:
    if name not in known:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")


def check_names(config: TrainConfig) -> None:
    """The relaxations (training and evaluation), the architecture and the data set exist."""
    for name in (config.relaxation, *config.eval_relaxations, *config.val_relaxations):
        _check_name("relaxation", name, RELAXATIONS)
    _check_name("architecture", config.arch, ARCHITECTURES)
    _check_name("data set", config.dataset, DATASETS)


def check_paths(config: TrainConfig) -> None:
    """``data_dir`` exists (unless ``download``), ``init_from`` is a folder, and ``out`` is not a file."""
    if config.data_dir is not None and not config.download and not Path(config.data_dir).exists():
        raise FileNotFoundError(f"--data-dir {config.data_dir!r} does not exist")
    if config.init_from is not None and not Path(config.init_from).is_dir():
        what = "is a file, not a run folder" if Path(config.init_from).exists() else "does not exist"
        raise FileNotFoundError(f"--init-from {config.init_from!r} {what}")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {config.out!r} is a file, not a folder")


def check_resumable(config: TrainConfig) -> None:
    """A folder with checkpoints holds a run of a config that ``config`` may resume (by its ``config.json``;
    the training loop checks the checkpoint's own copy again)."""
    saved = saved_config(config.out)
    if saved is not None and has_checkpoints(config.out):
        refusal = resume_refusal(saved, config)
        if refusal:
            raise ValueError(refusal)


def preflight(config: TrainConfig, *, resume: bool = True) -> None:
    """Every check of this module (``resume``: also :func:`check_resumable`)."""
    check_names(config)
    check_paths(config)
    if resume:
        check_resumable(config)
