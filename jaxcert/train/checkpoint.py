"""Checkpoints with orbax-checkpoint: the whole ``TrainState`` (params, BatchNorm statistics, optax or
PGPE state, step) plus JSON metadata (config, seed, base RNG key) every ``every`` steps and at the end,
keeping the last ``keep``.

Together with batches that are a function of ``(seed, epoch)`` and step keys
``fold_in(key(seed), step)``, restoring the latest finished checkpoint continues a killed run exactly:
orbax writes each step to a temporary directory and renames it when complete, so a checkpoint
interrupted by the kill is never restored. A checkpoint that cannot be read back (a truncated or
corrupted file) is reported with a warning, deleted, and the previous one is used
(:meth:`Checkpoints.restore_valid`). Ctrl-C during a save is held until the save has finished
(:func:`interrupts_deferred`), so the interrupted run's last checkpoint is the step it stopped at.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcert.train.state import TrainState


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block has finished, then raise ``KeyboardInterrupt``.

    Only the main thread can install signal handlers; elsewhere the block runs unprotected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


class Checkpoints:
    """Save/restore ``TrainState`` + metadata under ``directory`` (one sub-directory per step)."""

    def __init__(self, directory: str | Path, *, every: int, keep: int = 3):
        if every < 1:
            raise ValueError(f"checkpoint interval must be >= 1 step, got {every}")
        if keep < 1:
            raise ValueError(f"must keep at least one checkpoint, got keep={keep}")
        self.every = every
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def save(self, state: TrainState, meta: dict[str, Any]) -> int:
        """Save at ``state.step`` (no-op if that step is already saved); returns the step. A Ctrl-C during
        the save is raised once the checkpoint is complete."""
        step = int(state.step)
        with interrupts_deferred():
            if step not in self.manager.all_steps():
                args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
                self.manager.save(step, args=args, force=True)
                self.manager.wait_until_finished()
        return step

    def read_meta(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON metadata of checkpoint ``step`` (default: the latest) without touching the state."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]] | None:
        """``(state, meta)`` of checkpoint ``step`` (default: the latest) shaped like ``template``; ``None``
        when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored["state"], dict(restored["meta"])

    def restore_valid(
        self,
        template: TrainState,
        check_meta: Callable[[dict[str, Any]], None] | None = None,
        *,
        discard: bool = True,
    ) -> tuple[TrainState, dict[str, Any]] | None:
        """``(state, meta)`` of the newest checkpoint that reads back; unreadable newer ones are reported
        with a warning (and deleted if ``discard``, so that training can save that step again).
        ``check_meta(meta)`` runs before the state is restored (it may raise, e.g. for a checkpoint of
        another config: that error propagates). ``None`` when no checkpoint is readable."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.read_meta(step)
            except Exception as err:  # orbax raises many types for damaged files
                self._discard(step, err, discard)
                continue
            if check_meta is not None:
                check_meta(meta)
            try:
                return self.restore(template, step)
            except Exception as err:
                self._discard(step, err, discard)
        return None

    def _discard(self, step: int, err: Exception, delete: bool) -> None:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"checkpoint at step {step} in {self.directory} is unreadable ({type(err).__name__}: {reason}); "
            f"{'deleted it, ' if delete else ''}falling back to the previous checkpoint",
            RuntimeWarning,
            stacklevel=3,
        )
        if delete:
            self.manager.delete(step)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
