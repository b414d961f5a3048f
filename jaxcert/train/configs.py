"""Named training configurations (the recipes) and command-line style overrides.

A :class:`TrainConfig` is a frozen, JSON-serialisable record of everything that determines a run.
Schedules are given as fractions of ``steps``: clean warm-up ``warmup_frac``, then the ε/κ/β ramp over
``ramp_frac``; the learning rate is multiplied by 0.1 at each fraction in ``lr_decay_fracs``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
from typing import Any

from jaxcert.crown_options import CrownOptions
from jaxcert.train.recipes import literature_recipes

METHODS = ("standard", "pgd", "certified", "rgs", "pgpe")
# --- state-of-the-art certified objectives (jaxcert.train.methods) ------------------------------------------
#: Certified objectives of the certified, RGS and PGPE trainers (field ``objective``); every one but
#: ``certified`` is also a method of its own: ``--method sabr`` is ``--method certified --objective sabr``.
OBJECTIVES = ("certified", "sabr", "taps", "staps", "mtl-ibp", "cc-ibp", "exp-ibp")
SOTA_METHODS = OBJECTIVES[1:]
#: Trainers whose objective is a certified objective (one of OBJECTIVES).
OBJECTIVE_TRAINERS = ("certified", "rgs", "pgpe")
#: Objectives that propagate only intervals through the feature extractor (TAPS): IBP relaxations only.
INTERVAL_ONLY_OBJECTIVES = ("taps", "staps")
#: TAPS's latent estimators: one PGD point per margin (the paper's default) or one point for all margins.
TAPS_ESTIMATORS = ("multi", "single")
METHODS = (*METHODS, *SOTA_METHODS)
# --- end of the state-of-the-art block ------------------------------------------------------------------------
#: Mean optimisers of PGPE (:mod:`jaxcert.train.es_optimizers`).
PGPE_OPTIMIZERS = ("clipup", "sgd", "adam")


def _registry() -> Any:
    """:mod:`jaxcert.bounds.registry`, imported on first use: the relaxations' traits (cost rank, fusable,
    interval, the options each takes) are declared where they are registered, in modules that import JAX.
    Only the checks of fields that need them (``loss_fusion``, TAPS's relaxation, ``relaxation_options``)
    and :attr:`TrainConfig.eval_cascade` pay that import; a default config imports no JAX."""
    from jaxcert.bounds import registry

    return registry


_OPTIONS_HELP = (
    "an option of the CROWN-family relaxations, NAME=VALUE (repeatable; jaxcert.crown_options), given to every "
    "relaxation of the run (training, certification) that takes it; an option none takes is an error"
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = "custom"  # run name (the named recipe it came from)
    method: str = "certified"  # standard|pgd|certified|rgs|pgpe, or sabr|taps|staps|mtl-ibp|cc-ibp|exp-ibp (certified)
    # data and network
    dataset: str = "fashion_mnist"  # fashion_mnist | mnist | cifar10 | spheres
    data_dir: str | None = None  # folder (or npz file) holding the data set; must exist
    download: bool = False  # let tensorflow-datasets download the data set when no offline copy is found
    train_limit: int | None = None  # use only the first N training examples
    val_size: int = 0  # hold out the last N training examples (after train_limit) as a validation split
    val_every: int = 0  # evaluate on the validation split every N steps and at the end (0: at each checkpoint)
    val_relaxations: tuple[str, ...] = ()  # relaxations certifying the validation split (empty: ibp, crown-ibp)
    arch: str = "cnn3"  # cnn3, cnn5, cnn7(_bn), paradox_fc, paradox_conv, mlp_small, mlp_14x14, resnet_small/tiny
    init: str = "ibp"  # "ibp" (Shi et al.) or "default"
    init_from: str | None = None  # warm start: a saved run's directory; its latest checkpoint's weights replace init
    # loss / recipe
    relaxation: str = "ibp"  # bound used by the certified loss (ibp, crown-ibp, deeppoly, ...)
    eps: float = 0.1  # training radius of the l-inf ball (input scale [0, 1])
    eps_ramp: str = "linear"  # or "smooth"
    warmup_frac: float = 0.05  # fraction of the steps trained clean (eps = 0) first
    ramp_frac: float = 0.5  # fraction of the steps over which eps, kappa and beta ramp to their final values
    kappa_final: float = 0.0  # final weight of the clean loss: (1 - kappa) L_cert + kappa L_clean
    beta_final: float = 0.0  # final CROWN-IBP mixing weight beta (CROWN share of the bound)
    l1: float = 0.0  # L1 weight penalty
    bn_momentum: float = 0.1  # BatchNorm running-statistics momentum
    bn_mode: str = "eval"  # BatchNorm statistics in training losses and bounds: eval (running) | batch (clean batch's)
    bn_population: bool = True  # BatchNorm nets: running mean/var := the training set's statistics after training
    reg_weight: float = 0.0  # Shi et al. warm-up regularisers (tightness + ReLU balance): weight λ (0: off)
    reg_tol: float = 0.5  # Shi et al. warm-up regularisers: tolerance τ
    loss_fusion: bool = False  # crown-ibp: bound the certified loss itself, one back-substituted row per example
    relaxation_options: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"help": _OPTIONS_HELP})
    # optimisation
    steps: int = 1000  # training steps
    batch_size: int = 128  # examples per step
    lr: float = 5e-4  # Adam learning rate
    lr_decay_fracs: tuple[float, ...] = (0.8, 0.9)  # learning rate x lr_decay_factor at these fractions of the steps
    lr_decay_factor: float = 0.1  # learning-rate factor at each decay (the SOTA papers' recipes: 0.2)
    grad_clip: float = 10.0  # global-norm gradient clipping (0: off)
    # PGD training
    attack_norm: str = "linf"  # PGD training threat model: linf | l2
    attack_steps: int = 5  # PGD training steps per batch (also the PGD inside sabr/taps/staps/mtl/cc/exp-ibp)
    # --- state-of-the-art certified objectives (jaxcert.train.methods; docs/training.md) ---
    objective: str = "certified"  # loss of certified/rgs/pgpe: certified|sabr|taps|staps|mtl-ibp|cc-ibp|exp-ibp
    sabr_lambda: float = 0.4  # SABR/STAPS: small-box ratio lambda in (0, 1] (1: the whole eps-box)
    method_alpha: float = 0.5  # MTL-IBP/CC-IBP/EXP-IBP: weight alpha in [0, 1] of the verified loss (0: PGD, 1: IBP)
    taps_split: int = -3  # TAPS/STAPS: feature extractor = the first N layers (negative: all but the last -N)
    taps_estimator: str = "multi"  # TAPS/STAPS latent PGD: multi (one point per margin, the paper's) | single
    taps_grad_scale: float = 5.0  # TAPS/STAPS loss expand(R_TAPS, s) * L_IBP (the paper's; 0: R_TAPS alone)
    taps_ibp_ramp: bool = True  # TAPS/STAPS: the IBP loss over the region until eps reaches its final value
    attack_step_rel: float = 0.0  # PGD step inside sabr/staps/mtl/cc/exp-ibp, x eps (0: the method's: 0.5 | 0.25)
    # --- end of the state-of-the-art fields ---
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
    member_chunk: int = 0  # GLS members at once (0: measured rule per backend, member_schedule; k: lax.map; N: vmap)
    member_unroll: bool = False  # removed (unrolled chunks were slower than lax.map, memory unbounded); True refused
    devices: int = 1  # shard the sample/population (GLS) or batch axis over this many devices (0: all)
    mesh_data: int = 0  # devices along the batch axis of the (batch × members) mesh (0: all for certified, 1 GLS)
    # multi-process runs (jax.distributed; the mesh spans every device of every process)
    distributed: bool = False  # join a multi-process run (explicit below, or auto-detected on TPU VMs / SLURM)
    coordinator: str | None = None  # HOST:PORT of process 0
    num_processes: int | None = None  # number of processes of the run
    process_id: int | None = None  # this process's id in [0, num_processes)
    distributed_timeout: float = 120.0  # seconds for all processes to join (then a clear error)
    # bookkeeping
    seed: int = 0  # seed of the initialisation, batch order and step keys
    out: str = "runs/custom"  # output folder (checkpoints, metrics, results)
    checkpoint_every: int = 500  # save a checkpoint every N steps (and at the end)
    keep_checkpoints: int = 3  # keep the last N checkpoints
    log_every: int = 10  # write a metrics record every N steps
    tensorboard: bool = False  # also write each metrics record as TensorBoard scalars under out/tensorboard
    # final evaluation (on the test split)
    test_limit: int | None = 1000  # evaluate on the first N test examples (none: all)
    eval_eps: float | None = None  # default: eps
    eval_relaxations: tuple[str, ...] = ()  # certification cascade, cheapest first (empty: ibp, crown-ibp, relaxation)
    eval_pgd_steps: int = 10  # PGD steps of the final evaluation
    eval_pgd_restarts: int = 1  # PGD random restarts of the final evaluation
    eval_apgd_steps: int = 20  # APGD-CE iterations of the final evaluation (0: no APGD)
    eval_batch_size: int = 250  # examples per evaluation batch

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f.name, str(f.type), getattr(self, f.name))
        # validated and normalised (typed values, declaration order) without JAX; who takes them: at the end
        object.__setattr__(self, "relaxation_options", CrownOptions.from_dict(self.relaxation_options).to_dict())
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        positive = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "samples", "population")
        positive += ("eval_batch_size", "eval_pgd_restarts")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_size < 0 or self.val_every < 0:
            raise ValueError(f"val_size and val_every must be >= 0, got {self.val_size} and {self.val_every}")
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or none: no limit), got {getattr(self, name)}")
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        nonnegative = ("attack_steps", "eval_pgd_steps", "eval_apgd_steps", "devices", "grad_clip", "l1", "sigma",
                       "taps_grad_scale")  # fmt: skip
        for name in nonnegative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_eps is not None and self.eval_eps < 0:
            raise ValueError(f"eval_eps must be >= 0 (or none: eps), got {self.eval_eps}")
        if self.distributed_timeout <= 0:
            raise ValueError(f"distributed_timeout must be > 0 seconds, got {self.distributed_timeout}")
        if self.mesh_data < 0:
            raise ValueError(f"mesh_data must be >= 0 (0: automatic), got {self.mesh_data}")
        if self.member_chunk < 0:
            raise ValueError(f"member_chunk must be >= 0 (0: the default rule per backend), got {self.member_chunk}")
        if self.member_unroll:
            raise ValueError(
                "member_unroll was removed: unrolled chunks ran slower than lax.map and did not bound memory "
                "(experiments/RESULTS.md); member_chunk alone sets the schedule"
            )
        size = {"rgs": self.samples, "pgpe": self.population}.get(self.method)
        if size is not None and self.member_chunk and size % self.member_chunk:
            what = "samples" if self.method == "rgs" else "population"
            raise ValueError(f"{what} ({size}) must be a multiple of member_chunk ({self.member_chunk})")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_decay_factor <= 1:
            raise ValueError(f"lr_decay_factor must be in (0, 1], got {self.lr_decay_factor}")
        if self.sigma_rel < 0:
            raise ValueError(f"sigma_rel must be >= 0 (0: absolute sigma), got {self.sigma_rel}")
        if self.std_lr < 0 or self.max_speed < 0:
            raise ValueError(f"std_lr and max_speed must be >= 0, got {self.std_lr} and {self.max_speed}")
        if not 0 <= self.momentum < 1 or not 0 <= self.weight_decay < 1:
            raise ValueError(f"momentum and weight_decay must be in [0, 1), got {self.momentum}, {self.weight_decay}")
        if self.pgpe_optimizer not in PGPE_OPTIMIZERS:
            raise ValueError(f"unknown pgpe_optimizer {self.pgpe_optimizer!r}; known: {', '.join(PGPE_OPTIMIZERS)}")
        if self.bn_mode not in ("eval", "batch"):
            raise ValueError(f"unknown bn_mode {self.bn_mode!r}; expected 'eval' or 'batch'")
        if self.reg_weight < 0 or self.reg_tol <= 0:
            raise ValueError(f"reg_weight must be >= 0 and reg_tol > 0, got {self.reg_weight} and {self.reg_tol}")
        if self.bn_mode == "batch" and self.method == "pgd":
            raise ValueError("bn_mode='batch' is not supported by method 'pgd' (PGD training uses eval mode)")
        if self.reg_weight and self.method in ("standard", "pgd"):
            raise ValueError(f"reg_weight (warm-up regularisers) needs a certified loss, not method {self.method!r}")
        if self.loss_fusion and (self.method in ("standard", "pgd") or not _registry().is_fusable(self.relaxation)):
            fusable = " or ".join(repr(name) for name in _registry().relaxations_with("fusable"))
            raise ValueError(
                f"loss_fusion needs a certified loss with relaxation {fusable}, got method {self.method!r} "
                f"and relaxation {self.relaxation!r}"
            )
        if self.eps_ramp not in ("linear", "smooth"):
            raise ValueError(f"unknown eps_ramp {self.eps_ramp!r}; expected 'linear' or 'smooth'")
        if self.attack_norm not in ("linf", "l2"):
            raise ValueError(f"unknown attack_norm {self.attack_norm!r}; expected 'linf' or 'l2'")
        if self.init not in ("ibp", "default"):
            raise ValueError(f"unknown init {self.init!r}; expected 'ibp' or 'default'")
        for name in ("warmup_frac", "ramp_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_frac + self.ramp_frac > 1.0:
            raise ValueError("warmup_frac + ramp_frac must be <= 1")
        self._check_objective()
        if self.relaxation_options:
            _registry().options_by_relaxation(self.bounded_relaxations, self.relaxation_options)

    # --- state-of-the-art certified objectives: validation -------------------------------------------------------
    def _check_objective(self) -> None:
        """One-line errors for bad objective settings; ``--method sabr`` etc. set ``objective`` to the method."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        if self.method in SOTA_METHODS:
            if self.objective not in ("certified", self.method):
                raise ValueError(
                    f"method {self.method!r} is the objective {self.method!r}; objective {self.objective!r} "
                    f"conflicts (use --method certified/rgs/pgpe --objective {self.objective})"
                )
            object.__setattr__(self, "objective", self.method)  # normalised: the objective actually trained
        elif self.objective != "certified" and self.method not in OBJECTIVE_TRAINERS:
            raise ValueError(
                f"objective {self.objective!r} needs method {', '.join(OBJECTIVE_TRAINERS)} or {self.objective}, "
                f"not {self.method!r}"
            )
        if not 0.0 < self.sabr_lambda <= 1.0:
            raise ValueError(f"sabr_lambda must be in (0, 1], got {self.sabr_lambda}")
        if not 0.0 <= self.method_alpha <= 1.0:
            raise ValueError(f"method_alpha must be in [0, 1], got {self.method_alpha}")
        if self.taps_estimator not in TAPS_ESTIMATORS:
            raise ValueError(f"unknown taps_estimator {self.taps_estimator!r}; known: {', '.join(TAPS_ESTIMATORS)}")
        if self.attack_step_rel < 0:
            raise ValueError(f"attack_step_rel must be >= 0 (0: the method's own step), got {self.attack_step_rel}")
        if self.objective == "certified":
            return
        name = repr(self.objective)
        if self.attack_steps < 1:
            raise ValueError(f"objective {name} runs PGD: attack_steps must be >= 1, got {self.attack_steps}")
        if self.attack_norm != "linf":
            raise ValueError(f"objective {name} is defined for the linf box, not attack_norm {self.attack_norm!r}")
        if self.loss_fusion:
            raise ValueError(f"loss_fusion fuses the plain certified loss; objective {name} needs margin bounds")
        # "ibp" is the interval relaxation by definition: asking the registry (JAX) only for other names keeps
        # the TAPS recipes of CONFIGS importable without JAX
        interval = lambda name: name == "ibp" or _registry().is_interval(name)
        if self.objective in INTERVAL_ONLY_OBJECTIVES and not interval(self.relaxation):
            raise ValueError(
                f"objective {self.objective!r} bounds its feature extractor with IBP: relaxation must be "
                f"{' or '.join(_registry().relaxations_with('interval'))}, got {self.relaxation!r}"
            )

    @property
    def method_label(self) -> str:
        """The method, followed by the objective when a certified/GLS method trains another objective than the
        plain certified loss: ``"sabr"``, ``"rgs-sabr"``, ``"certified"`` (run folders, messages, plot titles)."""
        if self.objective in ("certified", self.method):
            return self.method
        return f"{self.method}-{self.objective}"

    # --- end of the state-of-the-art validation --------------------------------------------------------------------

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

    @property
    def val_cascade(self) -> tuple[str, ...]:
        """The relaxations certifying the validation split: ``val_relaxations`` if given, else IBP and
        CROWN-IBP (cheap: seconds for thousands of CNN3 examples)."""
        return tuple(self.val_relaxations) or ("ibp", "crown-ibp")

    @property
    def eval_cascade(self) -> tuple[str, ...]:
        """The relaxations of the final certification, cheapest first: ``eval_relaxations`` if given, else
        IBP, CROWN-IBP and the training relaxation, ordered by cost rank
        (:func:`jaxcert.bounds.registry.cheapest_first`; imports JAX)."""
        if self.eval_relaxations:
            return tuple(self.eval_relaxations)
        return _registry().cheapest_first(dict.fromkeys(("ibp", "crown-ibp", self.relaxation)))

    @property
    def bounded_relaxations(self) -> tuple[str, ...]:
        """Every relaxation the run bounds with: the training relaxation (but for standard and PGD training),
        then the final certification's cascade — those that ``relaxation_options`` go to."""
        trained = () if self.method in ("standard", "pgd") else (self.relaxation,)
        return tuple(dict.fromkeys((*trained, *self.eval_cascade)))

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


@functools.cache
def annotation_parts(annotation: str) -> tuple[str, bool, bool]:
    """``(scalar type name, optional, tuple)`` of a field annotation, e.g. ``("float", False, True)`` for
    ``"tuple[float, ...]"`` and ``("int", True, False)`` for ``"int | None"``."""
    text = annotation.replace(" ", "")
    optional = text.endswith("|None")
    text = text.removesuffix("|None")
    match = re.fullmatch(r"tuple\[(\w+),\.\.\.\]", text)
    return (match.group(1) if match else text), optional, match is not None


def describe_type(annotation: str) -> str:
    """``"an int"``, ``"a float or none"``, ``"a tuple of str"``, ... for error messages."""
    kind, optional, is_tuple = annotation_parts(annotation)
    text = f"a tuple of {kind}" if is_tuple else f"an {kind}" if kind == "int" else f"a {kind}"
    return text + (" or none" if optional else "")


def _is_a(kind: str, value: Any) -> bool:
    """``value`` is of the scalar ``kind`` (an int also counts as a float; a bool counts as neither)."""
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    types = {"int": numbers.Integral, "float": numbers.Real, "str": str}.get(kind)
    return types is None or isinstance(value, types)


def check_field(name: str, annotation: str, value: Any) -> None:
    """``TypeError`` naming the field unless ``value`` fits ``annotation``; ``ValueError`` for a float
    (or a float in a tuple) that is NaN or infinite: no field of the config has a use for those."""
    kind, optional, is_tuple = annotation_parts(annotation)
    if value is None and optional:
        return
    items = value if is_tuple and isinstance(value, tuple) else (value,)
    if (is_tuple and not isinstance(value, tuple)) or not all(_is_a(kind, v) for v in items):
        raise TypeError(f"{name} must be {describe_type(annotation)}, got {value!r}")
    if kind == "float" and not all(math.isfinite(v) for v in items):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


_BASE = TrainConfig()

#: GLS with full CROWN/DeepPoly on CNN3 at batch 32, the member schedule by the measured default rule
#: (member_chunk=0, jaxcert.train.member_schedule): on CPUs lax.map over small chunks (one vmap of 32 members
#: was the slow program there, and XLA estimates it at 10.8 GiB); on GPUs/TPUs one vmap while it fits.
_GLS = dataclasses.replace(_BASE, relaxation="deeppoly", batch_size=32, member_chunk=0, steps=3000)

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

# --- the literature's recipes of the state-of-the-art methods (jaxcert.train.recipes; docs/training.md) ---
CONFIGS.update(literature_recipes(_BASE))


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
