"""When a run folder may be resumed, and when it is already finished (imports no JAX).

A run folder's checkpoints may be resumed by a config that differs from theirs only in fields that do not
change the trajectory (:data:`RESUME_FREE_FIELDS`), and in ``steps`` when it grows while the schedule stays
put: the warm-up, the ε/κ/β ramp and the learning-rate decays are fractions of ``steps``, so a longer run
only continues the saved one exactly if those steps do not move (e.g. ``warmup_frac = ramp_frac = 0`` and
no ``lr_decay_fracs``). A run is *finished* when its folder holds the final checkpoint and the results of
the same config (:func:`finished_message`): rerunning its command then changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxcert.train.configs import TrainConfig

#: Config fields that may differ between a run and its resumption (they do not change the trajectory).
RESUME_FREE_FIELDS = frozenset(
    {"out", "data_dir", "checkpoint_every", "keep_checkpoints", "log_every", "test_limit", "eval_eps",
     "eval_relaxations", "eval_pgd_steps", "eval_pgd_restarts", "eval_apgd_steps", "eval_batch_size",
     "devices", "member_chunk", "member_unroll", "download", "val_every", "val_relaxations", "tensorboard",
     "mesh_data", "distributed", "coordinator", "num_processes", "process_id", "distributed_timeout"}
)  # fmt: skip

#: Free fields that change a finished run's results (the final evaluation): changing one re-evaluates it.
EVALUATION_FIELDS = frozenset(
    {"data_dir", "test_limit", "eval_eps", "eval_relaxations", "eval_pgd_steps", "eval_pgd_restarts",
     "eval_apgd_steps", "eval_batch_size"}
)  # fmt: skip


def _as_json(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict()))


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the fields it lacks (written before they existed) at their defaults."""
    return {**_as_json(TrainConfig()), **saved}


def schedule_steps(config: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    """``(warm-up steps, ramp steps, learning-rate decay steps)`` of a config (as a JSON dict), as in
    :class:`TrainConfig`: fractions of ``steps``, rounded."""
    steps = config["steps"]
    decays = tuple(round(f * steps) for f in config["lr_decay_fracs"])
    return round(config["warmup_frac"] * steps), round(config["ramp_frac"] * steps), decays


def extends(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """``current`` trains the saved run for more steps along the same schedule (so resuming it is exact)."""
    return current["steps"] > saved["steps"] and schedule_steps(current) == schedule_steps(saved)


def steps_free(config: dict[str, Any]) -> bool:
    """The schedule does not depend on ``steps`` (no warm-up, no ramp, no decay): any longer run extends it."""
    return config["warmup_frac"] == 0 and config["ramp_frac"] == 0 and not config["lr_decay_fracs"]


def config_differences(saved: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, current value)}`` for the fields that would change the trajectory; a field
    missing from ``saved`` (written before the field existed) counts as its default; more ``steps`` on the
    same schedule (:func:`extends`) is no difference."""
    current, saved = _as_json(config), _with_defaults(saved)
    keys = [k for k in sorted(current) if k not in RESUME_FREE_FIELDS and saved.get(k) != current[k]]
    if "steps" in keys and extends(saved, current):
        keys.remove("steps")
    return {k: (saved.get(k), current[k]) for k in keys}


def _steps_note(saved: dict[str, Any], config: TrainConfig) -> str:
    """Why more ``steps`` cannot resume this run, and what does (empty when ``steps`` is not the issue)."""
    current, saved = _as_json(config), _with_defaults(saved)
    if current["steps"] <= saved["steps"]:
        return ""
    before, after = schedule_steps(saved), schedule_steps(current)
    show = lambda s: f"warm-up {s[0]}, ramp {s[1]}, lr decays at {list(s[2])}"
    return (
        f" More steps cannot continue this run: its schedule is laid out over its {saved['steps']} steps "
        f"({show(before)}; with {current['steps']} steps: {show(after)}). To train its network further, "
        f"warm-start a new run from it: --init-from {config.out} --out NEW_FOLDER."
    )


def resume_refusal(saved: dict[str, Any], config: TrainConfig) -> str | None:
    """Why a checkpoint written with the config ``saved`` cannot be resumed by ``config``; ``None`` if it can."""
    changed = config_differences(saved, config)
    if not changed:
        return None
    details = "; ".join(f"{k}: {old!r} in the folder, {new!r} now" for k, (old, new) in changed.items())
    message = (
        f"cannot resume: {config.out} holds a checkpoint of a different config (differing in {details}). "
        "Pass --fresh to start over there, or --out for another folder."
    )
    return message + _steps_note(saved, config) if list(changed) == ["steps"] else message


def saved_config(out: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a run folder as a dict; ``None`` if there is none (or it is unreadable)."""
    path = Path(out) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def has_checkpoints(out: str | Path) -> bool:
    """The run folder holds at least one finished checkpoint (a ``checkpoints/<step>`` folder)."""
    folder = Path(out) / "checkpoints"
    return folder.is_dir() and any(p.is_dir() and p.name.isdigit() for p in folder.iterdir())


def _results_steps(out: Path) -> int | None:
    """``steps`` recorded in the folder's ``results.json`` (``None``: no readable results)."""
    try:
        return json.loads((out / "results.json").read_text()).get("steps")
    except (OSError, ValueError, AttributeError):
        return None


def finished_message(config: TrainConfig, *, evaluate: bool = True) -> str | None:
    """A one-line note if ``config.out`` holds the finished run of ``config`` (the final checkpoint, and with
    ``evaluate`` its results), so that rerunning would change nothing; ``None`` otherwise. The run must be of
    the same config up to the fields that change neither the trajectory nor the results (output folder,
    logging, checkpoint interval, devices): a changed evaluation setting re-evaluates the run."""
    out, saved = Path(config.out), saved_config(config.out)
    if saved is None or not (out / "checkpoints" / str(config.steps)).is_dir():
        return None
    current, saved = _as_json(config), _with_defaults(saved)
    ignored = RESUME_FREE_FIELDS - EVALUATION_FIELDS
    if any(saved.get(k) != v for k, v in current.items() if k not in ignored):
        return None
    has_results = _results_steps(out) == config.steps
    if evaluate and not has_results:
        return None
    results = f"results in {out / 'results.json'}" if has_results else "not evaluated"
    longer = "--steps N"
    if not steps_free(saved):
        longer = f"--init-from {out} --out NEW_FOLDER (a warm start; --steps cannot extend this run, whose schedule "
        longer += f"spans its {config.steps} steps)"
    return (
        f"{out} is finished ({config.steps} of {config.steps} steps; {results}). "
        f"To train longer: {longer}; to start over: --fresh."
    )
