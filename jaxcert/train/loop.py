"""The training loop: data → trainer → steps with logging and checkpoints (:func:`run_training`).

The final evaluation is not the loop's: :func:`jaxcert.workflow.train` trains with this loop, then certifies
with :mod:`jaxcert.certify`; this module imports neither, so certifying never imports the training loop.

Step ``t`` (0-based) trains on batch ``t mod B`` of epoch ``t div B`` (``B`` batches per epoch, order a
function of ``(seed, epoch)``) with key ``fold_in(key(seed), t)``, so a run restored from a checkpoint
at step ``s`` continues exactly as the uninterrupted run would have. A non-finite loss stops the run
with :class:`NonFiniteLossError`. With ``init_from`` the run starts from a saved run's weights
(:mod:`jaxcert.train.warm_start`); resuming it restores its own checkpoint, not the warm start.

Runs resume by default: :func:`run_training` continues from the newest readable checkpoint in ``config.out``
(refusing one written by a config that differs in a field outside :data:`RESUME_FREE_FIELDS`, or in
``steps`` where that moves the schedule: :mod:`jaxcert.train.resume`), and
``resume=False`` deletes the folder's checkpoints and metrics first. Ctrl-C saves a checkpoint at the
current step and raises :class:`RunInterrupted`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from tqdm import tqdm

from jaxcert.bounds import get_relaxation
from jaxcert.bounds.loss_fusion import fused_loss_from_box
from jaxcert.bounds.registry import accepted_by, accepted_options, is_beta_mixable
from jaxcert.crown_options import CrownOptions
from jaxcert.data import Dataset, batches, num_batches
from jaxcert.nets import get_architecture, init_params
from jaxcert.nets.layers import Arch
from jaxcert.nets.network import LayerParams, split_trainable
from jaxcert.train import distributed as dist
from jaxcert.train.adversarial import adversarial_trainer
from jaxcert.train.batch_norm import has_batch_norm
from jaxcert.train.bn_population import population_stats
from jaxcert.train.certified import certified_trainer
from jaxcert.train.checkpoint import Checkpoints
from jaxcert.train.configs import TrainConfig
from jaxcert.train.es_optimizers import mean_optimizer
from jaxcert.train.gradient import gradient_trainer, plain_gradient
from jaxcert.train.init import ibp_init
from jaxcert.train.logging import MetricsLog, plot_metrics, read_metrics
from jaxcert.train.member_schedule import describe as describe_member_schedule
from jaxcert.train.methods import make_objective, split_arch
from jaxcert.train.pgpe import pgpe_trainer
from jaxcert.train.resume import RESUME_FREE_FIELDS, config_differences, resume_refusal  # noqa: F401 (re-exported)
from jaxcert.train.rgs import rgs_trainer
from jaxcert.train.run_data import load_data, validation_split
from jaxcert.train.schedules import recipe_schedule, step_decay
from jaxcert.train.sharding import BATCH, SAMPLES, shard_batch, training_mesh
from jaxcert.train.sigma import Sigma, relative_sigma
from jaxcert.train.standard import standard_trainer
from jaxcert.train.state import Trainer, TrainState
from jaxcert.train.warm_start import load_run_params

#: Files of a run that ``resume=False`` (``--fresh``) deletes.
RUN_OUTPUTS = (
    "checkpoints", "metrics.jsonl", "results.json", "curves.png", "certify.json", "certify.md", "tensorboard"
)  # fmt: skip


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved at ``step`` in ``checkpoint_dir``."""

    def __init__(self, step: int, checkpoint_dir: Path):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {checkpoint_dir}")
        self.step = step
        self.checkpoint_dir = checkpoint_dir


def initial_params(config: TrainConfig, arch: Arch, in_shape: tuple[int, ...]) -> LayerParams:
    """flax's default initialisation (jitted: one compile instead of one per eager op), then optionally
    Shi et al.'s IBP initialisation; with ``init_from`` the saved run's weights instead (warm start, the
    fresh init only fixing the expected architecture)."""
    params = jax.jit(init_params, static_argnums=(0, 1, 2))(arch, tuple(in_shape), config.seed)
    if config.init_from:
        return load_run_params(config.init_from, params)
    if config.init == "ibp":
        params = ibp_init(arch, params, seed=config.seed)
    return params


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with the step-decayed learning rate, after global-norm gradient clipping (if > 0)."""
    adam = optax.adam(step_decay(config.lr, config.lr_decay_steps, config.lr_decay_factor))
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adam) if config.grad_clip > 0 else adam


def make_pgpe_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The PGPE mean optimiser ``config.pgpe_optimizer`` with the step-decayed learning rate (``adam``: the
    run's Adam of :func:`make_optimizer`), and decoupled weight decay if ``config.weight_decay`` > 0."""
    return mean_optimizer(
        config.pgpe_optimizer, step_decay(config.lr, config.lr_decay_steps, config.lr_decay_factor), base_lr=config.lr,
        max_speed=config.max_speed, momentum=config.momentum, weight_decay=config.weight_decay,
        adam=make_optimizer(config),
    )  # fmt: skip


def gls_sigma(config: TrainConfig, params: LayerParams) -> Sigma:
    """The GLS σ: ``config.sigma`` for every weight, or per leaf ``sigma_rel · scale(leaf)`` of ``params``."""
    if config.sigma_rel > 0:
        return relative_sigma(split_trainable(params)[0], config.sigma_rel)
    return config.sigma


def training_relaxation_options(config: TrainConfig) -> dict[str, Any]:
    """The ``relaxation_options`` of ``config`` that its training relaxation takes (with ``loss_fusion``: that
    the fused loss takes, :func:`jaxcert.bounds.loss_fusion.fused_loss_from_box`), as keyword arguments."""
    options = CrownOptions.from_dict(config.relaxation_options)
    if config.loss_fusion:
        return options.kwargs_for(accepted_by(fused_loss_from_box))
    return options.kwargs_for(accepted_options(config.relaxation))


def make_trainer(
    config: TrainConfig, arch: Arch, params: LayerParams, input_range: tuple[float, float], mesh: Any = None
) -> Trainer:
    lo, hi = input_range
    schedule = recipe_schedule(
        config.eps,
        warmup=config.warmup_steps,
        ramp=config.ramp_steps,
        kappa_final=config.kappa_final,
        beta_final=config.beta_final,
        eps_ramp=config.eps_ramp,
    )
    optimizer = make_optimizer(config)
    common = {"bn_momentum": config.bn_momentum}
    if config.method == "standard":
        return standard_trainer(arch, optimizer, l1=config.l1, bn_mode=config.bn_mode, **common)
    if config.method == "pgd":
        return adversarial_trainer(
            arch, optimizer, schedule, norm=config.attack_norm, attack_steps=config.attack_steps, l1=config.l1,
            lo=lo, hi=hi, **common,
        )  # fmt: skip
    loss_options = {"l1": config.l1, "lo": lo, "hi": hi, "bn_mode": config.bn_mode}
    loss_options |= {"reg_weight": config.reg_weight, "reg_tol": config.reg_tol, "loss_fusion": config.loss_fusion}
    loss_options |= training_relaxation_options(config)
    if config.method == "certified" and config.objective == "certified":
        return certified_trainer(arch, config.relaxation, optimizer, schedule, **loss_options, **common)
    # --- state-of-the-art objectives: config.objective, by gradient (--method sabr, ...) or by GLS ---
    objective = make_objective(
        config.objective, arch, config.relaxation, schedule, seed=config.seed, attack_steps=config.attack_steps,
        sabr_lambda=config.sabr_lambda, method_alpha=config.method_alpha, taps_split=config.taps_split,
        taps_estimator=config.taps_estimator, taps_grad_scale=config.taps_grad_scale,
        taps_ibp_ramp=config.taps_ibp_ramp, attack_step_rel=config.attack_step_rel, **loss_options,
    )  # fmt: skip
    if config.method not in ("rgs", "pgpe"):
        return gradient_trainer(arch, plain_gradient(objective), optimizer, **common)
    # --- end of the state-of-the-art block ---
    if config.method == "rgs":
        return rgs_trainer(
            arch, objective, optimizer, sigma=gls_sigma(config, params), samples=config.samples,
            antithetic=config.antithetic, chunk=config.member_chunk, mesh=mesh, **common,
        )  # fmt: skip
    return pgpe_trainer(
        arch, objective, params, make_pgpe_optimizer(config), sigma=gls_sigma(config, params),
        population=config.population, std_lr=config.std_lr,
        chunk=config.member_chunk, mesh=mesh, **common,
    )  # fmt: skip


def _mesh(config: TrainConfig):  # type: ignore[no-untyped-def]
    """``devices`` devices (a multi-process run: all of every process), ``mesh_data`` of them along the batch
    (default: all for certified/standard/PGD training, none for GLS, whose members take the devices)."""
    total = len(jax.devices())
    if config.distributed and config.devices not in (0, 1, total):
        raise ValueError(f"a multi-process run uses all {total} devices of its processes, not devices={config.devices}")
    n = total if config.devices == 0 or config.distributed else config.devices
    return training_mesh(n, config.mesh_data or (1 if config.method in ("rgs", "pgpe") else n))


def say(message: str) -> None:
    """A line on stdout that does not break the progress bar (on stderr); process 0 only."""
    if not dist.is_main_process():
        return
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    refusal = resume_refusal(saved, config)
    if refusal:
        raise ValueError(refusal)


def clear_run(out: Path) -> None:
    """Delete the checkpoints, metrics and results of a previous run in ``out`` (``--fresh``)."""
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class Setup(NamedTuple):
    train_ds: Dataset
    test_ds: Dataset
    arch: Arch
    params: LayerParams
    trainer: Trainer
    mesh: Any
    val_ds: Dataset | None = None


def check_split(config: TrainConfig) -> None:
    """TAPS/STAPS: ``ValueError`` for a ``taps_split`` out of range of the architecture or inside a residual block
    (the layers do not depend on the data set), before anything is loaded or written."""
    if config.objective in ("taps", "staps"):
        split_arch(get_architecture(config.arch), config.taps_split)


def setup(config: TrainConfig) -> Setup:
    """Data, architecture, initial params and trainer of ``config`` (everything but the loop)."""
    if config.distributed:  # before anything touches the devices
        dist.initialize(config.coordinator, config.num_processes, config.process_id, timeout=config.distributed_timeout)
    if config.method not in ("standard", "pgd"):
        get_relaxation(config.relaxation)  # unknown relaxation: clear error before loading anything
    check_split(config)
    train_ds, test_ds = load_data(config)
    train_ds, val_ds = validation_split(train_ds, config.val_size)
    arch = get_architecture(config.arch, train_ds.num_classes, train_ds.normalization)
    params = initial_params(config, arch, train_ds.in_shape)
    mesh = _mesh(config)
    member_mesh = mesh if mesh is not None and SAMPLES in mesh.axis_names else None
    trainer = make_trainer(config, arch, params, train_ds.input_range, member_mesh)
    return Setup(train_ds, test_ds, arch, params, trainer, mesh, val_ds)


class TrainedRun(NamedTuple):
    """What :func:`run_training` hands to the steps after training (:mod:`jaxcert.workflow`): the final
    state, the architecture, the metrics records (process 0's; empty elsewhere), the output folder, the data
    splits, the training time, and whether this is a multi-process run and its process 0."""

    state: TrainState
    arch: Arch
    records: list[dict[str, Any]]
    out: Path
    train_ds: Dataset
    test_ds: Dataset
    train_seconds: float
    multi: bool
    main: bool


def run_training(config: TrainConfig, *, resume: bool = True, progress: bool = True) -> TrainedRun:
    """Train ``config`` (no final evaluation: that is :func:`jaxcert.workflow.train`'s, above both this loop
    and :mod:`jaxcert.certify`); the metrics are written, the curves are not plotted (:func:`plot_run`).

    ``resume=True`` (the default) continues from the newest readable checkpoint in ``config.out``, if any;
    ``resume=False`` deletes the folder's previous checkpoints and metrics and starts at step 0."""
    check_split(config)
    out = Path(config.out)
    train_ds, test_ds, arch, params, trainer, mesh, val_ds = setup(config)
    out.mkdir(parents=True, exist_ok=True)  # after the set-up: a failed one leaves no folder, deletes nothing
    if not resume:
        clear_run(out)
    multi, main = dist.multi_process(mesh), dist.is_main_process()  # several processes: global arrays, process 0 writes
    if main:
        say(f"data: {config.dataset}, {len(train_ds)} training examples from {train_ds.source or 'memory'}")
    shard_data = mesh is not None and BATCH in mesh.axis_names
    state: TrainState = trainer.init(params)
    if multi:
        state = dist.replicate(state, mesh)
        data_sharding = dist.batch_sharding(mesh, shard_data)
        rows = dist.process_rows(data_sharding, config.batch_size)  # this process loads only its rows of each batch
    meta = {"config": config.to_dict(), "seed": config.seed, "rng": jax.random.key_data(jax.random.key(config.seed))}
    meta["rng"] = np.asarray(meta["rng"]).tolist()

    checkpoints = Checkpoints(out / "checkpoints", every=config.checkpoint_every, keep=config.keep_checkpoints)
    resume_step = None
    if checkpoints.latest_step() is not None:
        restored = checkpoints.restore_valid(state, lambda m: _check_resumable(m["config"], config))
        if restored is not None:
            state = dist.replicate(restored[0], mesh) if multi else restored[0]
            resume_step = int(state.step)
            say(f"resumed from step {resume_step} ({checkpoints.directory}); --fresh starts over")
    tensorboard = out / "tensorboard" if config.tensorboard else None
    log = MetricsLog(out / "metrics.jsonl", resume_step=resume_step, tensorboard=tensorboard) if main else None
    if main:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    key = jax.random.wrap_key_data(np.asarray(meta["rng"], dtype=np.uint32))
    per_epoch = num_batches(train_ds, config.batch_size)
    if per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the training set ({len(train_ds)} examples)")
    step = int(state.step)
    window: dict[str, list[float]] = {}
    start_time = time.time()
    if step < config.steps:
        say(f"compiling the training step ({config.method_label}{_members(config)}); the first step includes it")
    bar = None  # made after the first step, so that its rate and ETA leave the compilation out
    clock = _StepClock(step, config.steps)
    try:
        while step < config.steps:
            epoch, first = divmod(step, per_epoch)
            for xb, yb in batches(
                train_ds, config.batch_size, seed=config.seed, epoch=epoch, start=first, rows=rows if multi else None
            ):
                if multi:
                    xb, yb = dist.global_batch(data_sharding, config.batch_size, xb, yb)
                elif shard_data:
                    xb, yb = shard_batch(mesh, xb, yb)
                state, metrics = trainer.step(state, xb, yb, jax.random.fold_in(key, step))
                step += 1
                host = {k: float(v) for k, v in dist.to_host(metrics).items()}
                shown = host.get("loss_at_mean", host["loss"])  # GLS: the loss of the returned net
                message = clock.tick(step, shown)
                if message:
                    say(message)
                if bar is None:
                    bar = tqdm(total=config.steps, initial=step - 1, disable=not (progress and main), desc=out.name,
                               dynamic_ncols=True)  # fmt: skip
                if not np.isfinite(host["loss"]):
                    raise NonFiniteLossError(
                        f"non-finite training loss {host['loss']} at step {step} (epoch {epoch}); metrics: {host}. "
                        "Lower the learning rate, eps or sigma, or enable gradient clipping."
                    )
                if step == config.steps and config.bn_population and has_batch_norm(arch):
                    state = with_population_stats(state, arch, train_ds, mesh if multi else None)
                    say(f"BatchNorm statistics recomputed over the {len(train_ds)} training examples")
                for k, v in host.items():
                    window.setdefault(k, []).append(v)
                bar.update(1)
                bar.set_postfix(loss=f"{shown:.3f}", eps=f"{host.get('eps', 0.0):.3f}", refresh=False)
                if step % config.log_every == 0 or step == config.steps:
                    record = {"step": step, "epoch": epoch, **{k: float(np.mean(v)) for k, v in window.items()}}
                    record["time"] = time.time() - start_time
                    if log is not None:
                        log.write(record)
                    window = {}
                if val_ds is not None and _validation_due(config, checkpoints, step):
                    record = {"step": step, "epoch": epoch, **validate(config, arch, state, val_ds, multi)}
                    if log is not None:
                        log.write(record)
                    say(f"step {step}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in record.items() if "acc" in k))
                if checkpoints.due(step) or step == config.steps:
                    checkpoints.save(state, meta)
                    say(f"checkpoint saved at step {step}")
                if step >= config.steps:
                    break
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        saved = checkpoints.save(state, meta)
        checkpoints.close()
        raise RunInterrupted(saved, checkpoints.directory) from None
    if bar is not None:
        bar.close()
    checkpoints.close()
    train_time = time.time() - start_time

    records = read_metrics(out / "metrics.jsonl") if main else []
    return TrainedRun(state, arch, records, out, train_ds, test_ds, train_time, multi, main)


def plot_run(config: TrainConfig, records: list[dict[str, Any]], out: Path) -> None:
    """``out/curves.png``: the metrics ``records`` and, but for standard training, the recipe's schedule."""
    title = f"{out.name}: {config.method_label}/{config.relaxation}"
    schedule = None if config.method == "standard" else _schedule_curve(config)
    plot_metrics(records, out / "curves.png", title=title, schedule=schedule)


def with_population_stats(state: TrainState, arch: Arch, train_ds: Dataset, mesh: Any = None) -> TrainState:
    """``state`` with the BatchNorm running statistics replaced by the training set's population statistics
    (:func:`jaxcert.train.bn_population.population_stats`), each leaf placed like the one it replaces (``mesh``:
    a multi-process run's, replicated on it)."""
    full = population_stats(arch, dist.to_host(state.full_params), train_ds.x)
    frozen = [{k: p[k] for k in f} for p, f in zip(full, state.frozen, strict=True)]
    if mesh is not None:
        return state.replace(frozen=dist.replicate(jax.tree_util.tree_map(np.asarray, frozen), mesh))
    place = lambda new, old: jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else new
    return state.replace(frozen=jax.tree_util.tree_map(place, frozen, state.frozen))


def _validation_due(config: TrainConfig, checkpoints: Checkpoints, step: int) -> bool:
    """Validate every ``val_every`` steps (0: whenever a checkpoint is due), and after the last step."""
    return step == config.steps or (step % config.val_every == 0 if config.val_every else checkpoints.due(step))


def validate(config: TrainConfig, arch: Arch, state: TrainState, val_ds: Dataset, multi: bool) -> dict[str, float]:
    """``val_clean_acc``, ``val_pgd_acc`` (PGD of the final evaluation's steps), ``val_cert_acc/<r>`` for each
    relaxation ``r`` of ``config.val_cascade`` (IBP and CROWN-IBP unless ``val_relaxations`` names others), and
    ``val_cert_acc`` (certified by any of them) on the validation split at the evaluation radius."""
    from jaxcert.evaluate import evaluate_per_example

    params = dist.to_host(state.full_params) if multi else state.full_params
    per = evaluate_per_example(
        arch, params, val_ds, config.test_eps, relaxations=config.val_cascade, pgd_steps=config.eval_pgd_steps,
        pgd_restarts=1, batch_size=config.eval_batch_size, seed=config.seed,
    )  # fmt: skip
    scores = {f"val_{k}": float(np.mean(v)) for k, v in per.items()}
    scores["val_cert_acc"] = float(np.mean(np.any([per[f"cert_acc/{r}"] for r in config.val_cascade], axis=0)))
    return scores


def _members(config: TrainConfig) -> str:
    """``", 32 members in one vmap"``-style description of the GLS member axis (empty for other methods)."""
    size = {"rgs": config.samples, "pgpe": config.population}.get(config.method)
    if size is None:
        return ""
    what = "samples" if config.method == "rgs" else "members"
    how = describe_member_schedule(size, config.member_chunk)
    return f", {size} {what} as {how}"


class _StepClock:
    """Times the first steps of a run and says what the run will cost: after the first step (which compiles)
    the compile time and first loss, after ``measure`` more steps the time per step and the estimated time
    of the remaining steps (``(total - step) · mean step time``)."""

    def __init__(self, step: int, total: int, measure: int = 3) -> None:
        self.first, self.total, self.measure = step, total, measure
        self.began = self.after_first = time.time()

    def tick(self, step: int, loss: float) -> str | None:
        """Called after each step; returns the line to print, if any."""
        now = time.time()
        done = step - self.first
        if done == 1:
            self.after_first = now
            return f"step {step}: loss {loss:.4f} (compiled and ran in {now - self.began:.1f} s)"
        if done == 1 + self.measure or (done > 1 and step == self.total and done < 1 + self.measure):
            per_step = (now - self.after_first) / (done - 1)
            left = (self.total - step) * per_step
            return (f"step {step}: loss {loss:.4f}; {per_step:.3g} s per step, about {_duration(left)} for the "
                    f"remaining {self.total - step} of {self.total} steps")  # fmt: skip
        return None


def _duration(seconds: float) -> str:
    """``"1 h 05 min"``, ``"4 min 10 s"`` or ``"12 s"``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def _schedule_curve(config: TrainConfig) -> dict[str, np.ndarray]:
    """``{"step", "eps", "kappa"[, "beta"]}`` of the recipe at up to 200 steps (for the plot; β only where
    the relaxation uses it)."""
    schedule = recipe_schedule(
        config.eps, warmup=config.warmup_steps, ramp=config.ramp_steps, kappa_final=config.kappa_final,
        beta_final=config.beta_final, eps_ramp=config.eps_ramp,
    )  # fmt: skip
    steps = np.unique(np.linspace(0, config.steps, min(config.steps + 1, 200)).astype(int))
    curves = {"step": steps, **{k: np.asarray(v) for k, v in schedule(steps).items()}}
    if not is_beta_mixable(config.relaxation):
        del curves["beta"]
    return curves
