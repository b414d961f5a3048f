"""Named training configurations (the recipes) and command-line style overrides.

A :class:`TrainConfig` is a frozen, JSON-serialisable record of everything that determines a run.
Schedules are given as fractions of ``steps``: clean warm-up ``warmup_frac``, then the ε/κ/β ramp over
``ramp_frac``; the learning rate is multiplied by 0.1 at each fraction in ``lr_decay_fracs``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

METHODS = ("standard", "pgd", "certified", "rgs", "pgpe")
#: Mean optimisers of PGPE (:mod:`jaxcert.train.es_optimizers`).
PGPE_OPTIMIZERS = ("clipup", "sgd", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = "custom"
    method: str = "certified"
    # data and network
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    arch: str = "cnn3"
    init: str = "ibp"  # "ibp" (Shi et al.) or "default"
    init_from: str | None = None  # warm start: a saved run's directory; its latest checkpoint's weights replace init
    # loss / recipe
    relaxation: str = "ibp"
    eps: float = 0.1
    eps_ramp: str = "linear"  # or "smooth"
    warmup_frac: float = 0.05
    ramp_frac: float = 0.5
    kappa_final: float = 0.0
    beta_final: float = 0.0
    l1: float = 0.0
    bn_momentum: float = 0.1
    # optimisation
    steps: int = 1000
    batch_size: int = 128
    lr: float = 5e-4
    lr_decay_fracs: tuple[float, ...] = (0.8, 0.9)
    grad_clip: float = 10.0
    # PGD training
    attack_norm: str = "linf"
    attack_steps: int = 5
    # Gaussian loss smoothing
    sigma: float = 0.01  # absolute σ, the same for every weight (used when sigma_rel is 0)
    sigma_rel: float = 0.0  # if > 0: σ per leaf = sigma_rel · std of the leaf at init (jaxcert.train.sigma)
    samples: int = 4  # RGS
    population: int = 16  # PGPE
    std_lr: float = 0.0  # PGPE σ learning rate (0: fixed σ)
    pgpe_optimizer: str = "clipup"  # PGPE mean optimiser: clipup | sgd | adam (the run's Adam, with grad_clip)
    max_speed: float = 0.0  # PGPE ClipUp: max norm of one mean step (0: 2 · lr, Toklu et al.'s ratio)
    momentum: float = 0.9  # PGPE mean optimiser momentum (clipup, sgd)
    weight_decay: float = 0.0  # PGPE: decoupled decay of the mean, μ ← (1 - weight_decay) μ + step per generation
    antithetic: bool = False  # RGS
    member_chunk: int = 0  # GLS samples/members evaluated at once (0: all, one vmap; k: lax.map over groups of k)
    member_unroll: bool = False  # GLS: the groups of member_chunk as copies in the program, not an XLA loop (CPU)
    devices: int = 1  # shard the sample/population (GLS) or batch axis over this many devices (0: all)
    # bookkeeping
    seed: int = 0
    out: str = "runs/custom"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    # final evaluation (on the test split)
    test_limit: int | None = 1000
    eval_eps: float | None = None  # default: eps
    eval_relaxations: tuple[str, ...] = ("ibp",)
    eval_pgd_steps: int = 10
    eval_batch_size: int = 250

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        positive = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.member_chunk < 0:
            raise ValueError(f"member_chunk must be >= 0 (0: all members at once), got {self.member_chunk}")
        size = {"rgs": self.samples, "pgpe": self.population}.get(self.method)
        if size is not None and self.member_chunk and size % self.member_chunk:
            what = "samples" if self.method == "rgs" else "population"
            raise ValueError(f"{what} ({size}) must be a multiple of member_chunk ({self.member_chunk})")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.sigma_rel < 0:
            raise ValueError(f"sigma_rel must be >= 0 (0: absolute sigma), got {self.sigma_rel}")
        if self.std_lr < 0 or self.max_speed < 0:
            raise ValueError(f"std_lr and max_speed must be >= 0, got {self.std_lr} and {self.max_speed}")
        if not 0 <= self.momentum < 1 or not 0 <= self.weight_decay < 1:
            raise ValueError(f"momentum and weight_decay must be in [0, 1), got {self.momentum}, {self.weight_decay}")
        if self.pgpe_optimizer not in PGPE_OPTIMIZERS:
            raise ValueError(f"unknown pgpe_optimizer {self.pgpe_optimizer!r}; known: {', '.join(PGPE_OPTIMIZERS)}")
        if self.init not in ("ibp", "default"):
            raise ValueError(f"unknown init {self.init!r}; expected 'ibp' or 'default'")
        for name in ("warmup_frac", "ramp_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_frac + self.ramp_frac > 1.0:
            raise ValueError("warmup_frac + ramp_frac must be <= 1")

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_frac * self.steps)

    @property
    def ramp_steps(self) -> int:
        return round(self.ramp_frac * self.steps)

    @property
    def lr_decay_steps(self) -> tuple[int, ...]:
        return tuple(round(f * self.steps) for f in self.lr_decay_fracs)

    @property
    def test_eps(self) -> float:
        return self.eps if self.eval_eps is None else self.eval_eps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tuples})


_BASE = TrainConfig()

#: GLS with full CROWN/DeepPoly on CNN3. Back-substitution through the convolutions is memory-hungry: one
#: member's value-and-gradient at batch 32 needs ~9.5 GiB (XLA's estimate; ~38 GiB at batch 128), one
#: member's loss ~3.8 GiB (a whole PGPE population of 32 at once: ~120 GiB), so the members are evaluated
#: one at a time (member_chunk=1); raise it on large accelerators, add member_unroll=True on CPUs.
_GLS = dataclasses.replace(_BASE, relaxation="deeppoly", batch_size=32, member_chunk=1, steps=3000)

CONFIGS: dict[str, TrainConfig] = {
    # README quickstart: CNN3 on offline Fashion-MNIST, IBP at ε = 0.1, a few CPU minutes.
    "quickstart": dataclasses.replace(
        _BASE,
        name="quickstart",
        steps=1200,
        batch_size=128,
        lr=1e-3,
        warmup_frac=0.05,
        ramp_frac=0.4,
        train_limit=None,
        test_limit=1000,
        checkpoint_every=400,
        out="runs/quickstart",
    ),
    "standard": dataclasses.replace(_BASE, name="standard", method="standard", init="default", out="runs/standard"),
    "pgd": dataclasses.replace(_BASE, name="pgd", method="pgd", init="default", out="runs/pgd"),
    "ibp": dataclasses.replace(_BASE, name="ibp", steps=6000, eps_ramp="smooth", out="runs/ibp"),
    "crown-ibp": dataclasses.replace(
        _BASE,
        name="crown-ibp",
        relaxation="crown-ibp",
        steps=6000,
        eps_ramp="smooth",
        beta_final=0.0,
        out="runs/crown-ibp",
    ),
    "rgs": dataclasses.replace(_GLS, name="rgs", method="rgs", sigma=0.01, samples=4, out="runs/rgs"),
    # PGPE: the recipe of experiments/pgpe_study.py (ClipUp step 0.01 / max speed 0.02 on the mean, σ = 0.1 ×
    # each leaf's std at the start); it fine-tunes best from a trained net: --init-from runs/ibp (RESULTS.md).
    "pgpe": dataclasses.replace(
        _GLS,
        name="pgpe",
        method="pgpe",
        pgpe_optimizer="clipup",
        lr=0.01,
        max_speed=0.02,
        sigma_rel=0.1,
        population=32,
        out="runs/pgpe",
    ),
    # Seconds-long smoke run on synthetic concentric spheres (tests, CI).
    "tiny": dataclasses.replace(
        _BASE,
        name="tiny",
        dataset="spheres",
        arch="mlp_small",
        init="default",
        eps=0.02,
        steps=60,
        batch_size=32,
        lr=1e-2,
        train_limit=256,
        test_limit=64,
        checkpoint_every=20,
        log_every=5,
        eval_pgd_steps=3,
        eval_batch_size=64,
        out="runs/tiny",
    ),
}


def get_config(name: str) -> TrainConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name]


def override(config: TrainConfig, **changes: Any) -> TrainConfig:
    """``config`` with the given fields replaced (``None`` values are ignored); unknown field -> ValueError."""
    changes = {k: v for k, v in changes.items() if v is not None}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
    return dataclasses.replace(config, **changes)
