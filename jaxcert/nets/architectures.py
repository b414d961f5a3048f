"""Architectures of the certified-training literature (see docs/training.md, "Architectures").

Each builder returns a static architecture (tuple of layer specs) whose first layer is the data set's
per-channel normalisation, so that input boxes live in the raw [0, 1] pixel space.
"""

from __future__ import annotations

from jaxcert.nets.layers import Add, Arch, AvgPool, BatchNorm, Conv, Dense, Flatten, LayerSpec, Normalize, ReLU

#: Per-channel (mean, std) of each data set's raw [0, 1] pixels.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2861,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "none": ((0.0,), (1.0,)),
}


def normalization(dataset: str) -> Normalize:
    if dataset not in NORMALIZATION:
        raise ValueError(f"unknown data set {dataset!r}; known: {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[dataset]
    return Normalize(mean, std)


def _with_relus(hidden: list[LayerSpec], batch_norm: bool = False) -> list[LayerSpec]:
    out: list[LayerSpec] = []
    for layer in hidden:
        out.append(layer)
        if batch_norm:
            out.append(BatchNorm())
        out.append(ReLU())
    return out


def cnn3(num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    """Conv(16,5,s2,p2)-ReLU-Conv(32,4,s2,p1)-ReLU-Flatten-Linear(classes)."""
    body = _with_relus([Conv(16, 5, 2, 2), Conv(32, 4, 2, 1)])
    return (normalization(dataset), *body, Flatten(), Dense(num_classes))


def cnn5(num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    """Conv(16,3,1,1)-Conv(16,4,2,1)-Conv(32,4,2,1)-Linear(512)-Linear(classes), ReLUs between."""
    convs = _with_relus([Conv(16, 3, 1, 1), Conv(16, 4, 2, 1), Conv(32, 4, 2, 1)])
    return (normalization(dataset), *convs, Flatten(), Dense(512), ReLU(), Dense(num_classes))


def cnn7(num_classes: int = 10, dataset: str = "cifar10", batch_norm: bool = False) -> Arch:
    """Conv(64,3,1,1)-Conv(64,3,1,1)-Conv(128,3,2,1)-Conv(128,3,1,1)-Conv(128,3,1,1)-Linear(512)-
    Linear(classes); ReLU (and BatchNorm in the BN variant) after each hidden layer."""
    convs = [Conv(64, 3, 1, 1), Conv(64, 3, 1, 1), Conv(128, 3, 2, 1), Conv(128, 3, 1, 1), Conv(128, 3, 1, 1)]
    body = _with_relus(convs, batch_norm)
    head = _with_relus([Dense(512)], batch_norm)
    return (normalization(dataset), *body, Flatten(), *head, Dense(num_classes))


def mlp(widths: tuple[int, ...], num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    """Flatten-Linear(w1)-ReLU-...-Linear(wk)-ReLU-Linear(classes)."""
    body = _with_relus([Dense(w) for w in widths])
    return (normalization(dataset), Flatten(), *body, Dense(num_classes))


def paradox_fc(num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    """The Paradox paper's FC net: 400-200-100-100-classes."""
    return mlp((400, 200, 100, 100), num_classes, dataset)


def paradox_conv(num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    """The Paradox paper's CONV net: Conv(16,4,s2,p1)-FC100-FC(classes)."""
    return (normalization(dataset), Conv(16, 4, 2, 1), ReLU(), Flatten(), Dense(100), ReLU(), Dense(num_classes))


def mlp_14x14(num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    """The seed papers' small 196-32-32-classes net on 14×14 images: AvgPool(2)-Flatten-Linear(32)-ReLU-
    Linear(32)-ReLU-Linear(classes) on 28×28 inputs.

    The ε-box of a 28×28 image maps through the 2×2 average pooling exactly onto the ε-box of the
    downsampled 14×14 image (each output averages its own four pixels, ``avg(x ± ε) = avg(x) ± ε``, and
    every corner of the small box is reached), so certifying this net at ε on the raw images certifies the
    196-input net at ε on the downsampled ones. Small enough for full CROWN/DeepPoly training on a CPU."""
    body = _with_relus([Dense(32), Dense(32)])
    return (normalization(dataset), AvgPool(2), Flatten(), *body, Dense(num_classes))


def residual_block(layers: list[LayerSpec], channels: int) -> list[LayerSpec]:
    """``layers`` followed by a basic residual block ``ReLU(x + Conv(ReLU(Conv(x))))`` (3×3 convolutions of
    ``channels`` channels, stride 1, padding 1; an identity shortcut, so ``channels`` = the input's)."""
    start = len(layers)  # the block's input is the input of its first layer
    return [*layers, Conv(channels, 3, 1, 1), ReLU(), Conv(channels, 3, 1, 1), Add(source=start), ReLU()]


def resnet_small(num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    """A small ResNet of the CROWN-IBP / auto_LiRPA line: Conv(16,3,1,1)-ReLU-[block](16)-Conv(32,4,2,1)-ReLU-
    [block](32)-AvgPool(2)-Flatten-Linear(100)-ReLU-Linear(classes), each [block] two 3×3 convolutions with
    an identity shortcut (:func:`residual_block`). 28×28 inputs end in 7×7×32 features, 32×32 in 8×8×32."""
    layers: list[LayerSpec] = [normalization(dataset), Conv(16, 3, 1, 1), ReLU()]
    layers = [*residual_block(layers, 16), Conv(32, 4, 2, 1), ReLU()]
    layers = residual_block(layers, 32)
    return (*layers, AvgPool(2), Flatten(), Dense(100), ReLU(), Dense(num_classes))


def resnet_tiny(num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    """A tiny residual net for tests and quick runs (192 ReLUs on 28×28 or 32×32 inputs, small enough for
    the exact MILP): Conv(4,7,s7)-ReLU-[block](4)-AvgPool(2)-Flatten-Linear(classes)."""
    layers = residual_block([normalization(dataset), Conv(4, 7, 7, 0), ReLU()], 4)
    return (*layers, AvgPool(2), Flatten(), Dense(num_classes))


ARCHITECTURES = {
    "cnn3": cnn3,
    "cnn5": cnn5,
    "cnn7": cnn7,
    "cnn7_bn": lambda num_classes=10, dataset="cifar10": cnn7(num_classes, dataset, batch_norm=True),
    "paradox_fc": paradox_fc,
    "paradox_conv": paradox_conv,
    "mlp_small": lambda num_classes=10, dataset="fashion_mnist": mlp((100, 100), num_classes, dataset),
    "mlp_14x14": mlp_14x14,
    "resnet_small": resnet_small,
    "resnet_tiny": resnet_tiny,
}


def get_architecture(name: str, num_classes: int = 10, dataset: str = "fashion_mnist") -> Arch:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](num_classes=num_classes, dataset=dataset)
