"""Checkpoints with orbax-checkpoint: the whole ``TrainState`` (params, BatchNorm statistics, optax or
PGPE state, step) plus JSON metadata (config, seed, base RNG key) every ``every`` steps and at the end,
keeping the last ``keep``.

Together with batches that are a function of ``(seed, epoch)`` and step keys
``fold_in(key(seed), step)``, restoring the latest finished checkpoint continues a killed run exactly:
orbax writes each step to a temporary directory and renames it when complete, so a checkpoint
interrupted by the kill is never restored. A checkpoint that cannot be read back (a truncated or
corrupted file) is reported with a one-line warning, deleted, and the previous one is used
(:meth:`Checkpoints.restore_valid`); the tracebacks orbax, absl and TensorStore print while failing to
read it are silenced (:func:`silenced_stderr`). Ctrl-C during a save is held until the save has finished
(:func:`interrupts_deferred`), so the interrupted run's last checkpoint is the step it stopped at.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcert.cli import OneLineWarning
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


class CheckpointWarning(OneLineWarning):
    """A checkpoint could not be read back and was skipped."""


class _Sink:
    """Where :func:`silenced_stderr` sends stderr: a buffer for ``sys.stderr``, a temporary file for fd 2."""

    def __init__(self) -> None:
        self.text = io.StringIO()
        self.file = tempfile.TemporaryFile()

    def size(self) -> int:
        return self.text.tell() + os.fstat(self.file.fileno()).st_size

    def settle(self, quiet: float = 0.5, limit: float = 3.0) -> None:
        """Wait until nothing was written for ``quiet`` seconds (at most ``limit`` seconds in all): threads
        of a failed read print their tracebacks a moment after the read has raised."""
        start = last = time.monotonic()
        size = self.size()
        while time.monotonic() - start < limit and time.monotonic() - last < quiet:
            time.sleep(0.02)
            if self.size() != size:
                size, last = self.size(), time.monotonic()


@contextlib.contextmanager
def silenced_stderr() -> Iterator[_Sink]:
    """Nothing reaches stderr during the block: Python logging is disabled (absl, orbax, asyncio), ``sys.stderr``
    is a buffer and file descriptor 2 a temporary file (TensorStore's threads print the tracebacks of a failed
    read there). Yields the sink, whose ``settle()`` waits for late writes. Exceptions still propagate."""
    previous_level = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    sink = _Sink()
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    try:
        saved_fd = os.dup(2)
        os.dup2(sink.file.fileno(), 2)
    except OSError:
        saved_fd = None
    try:
        with contextlib.redirect_stderr(sink.text):
            yield sink
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        sink.file.close()
        logging.disable(previous_level)


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

    def restore(self, template: TrainState | None, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """``(state, meta)`` of checkpoint ``step`` (default: the latest) shaped like ``template``; ``None``
        when there is no checkpoint. ``template=None`` restores the state as saved (a dict of the
        ``TrainState`` fields, with the saved shapes and dtypes), without building a trainer for a template."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        if template is None:
            abstract = self._as_saved_on_this_process(step)
        else:
            abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored["state"], dict(restored["meta"])

    def _as_saved_on_this_process(self, step: int) -> Any:
        """The saved state's shapes and dtypes (from the checkpoint's metadata), every array placed on this
        process's first device: restoring with the saved shardings would name a device that another process
        of a multi-process run owns."""
        saved = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
        tree = getattr(saved, "item_metadata", saved)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        place = lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device) if hasattr(m, "dtype") else m
        return jax.tree_util.tree_map(place, tree)

    def restore_valid(
        self,
        template: TrainState | None,
        check_meta: Callable[[dict[str, Any]], None] | None = None,
        *,
        discard: bool = True,
    ) -> tuple[TrainState, dict[str, Any]] | None:
        """``(state, meta)`` of the newest checkpoint that reads back; unreadable newer ones are reported
        with one :class:`CheckpointWarning` each (and deleted if ``discard``, so that training can save that
        step again), the noise of the failed reads silenced. ``check_meta(meta)`` runs before the state is
        restored (it may raise, e.g. for a checkpoint of another config: that error propagates). ``None``
        when no checkpoint is readable. ``template=None``: the states as saved (see :meth:`restore`)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        unreadable: list[tuple[int, Exception]] = []
        try:
            with silenced_stderr() as sink:
                try:
                    return self._newest_readable(template, steps, check_meta, unreadable, discard)
                finally:
                    if unreadable:
                        sink.settle()
        finally:
            for step, err in unreadable:
                self._warn(step, err, discard, steps)

    def _newest_readable(
        self,
        template: TrainState | None,
        steps: list[int],
        check_meta: Callable[[dict[str, Any]], None] | None,
        unreadable: list[tuple[int, Exception]],
        discard: bool,
    ) -> tuple[TrainState, dict[str, Any]] | None:
        """The first of ``steps`` that reads back; appends the others to ``unreadable`` (deleting them if
        ``discard``)."""
        for step in steps:
            restored = self._try_restore(template, step, check_meta)
            if not isinstance(restored, Exception):
                return restored
            unreadable.append((step, restored))
            if discard:
                self.manager.delete(step)
        return None

    def _try_restore(
        self, template: TrainState | None, step: int, check_meta: Callable[[dict[str, Any]], None] | None
    ) -> tuple[TrainState, dict[str, Any]] | Exception:
        """``(state, meta)`` of checkpoint ``step``, or the exception that reading it raised (``check_meta``'s
        own errors propagate)."""
        try:
            meta = self.read_meta(step)
        except Exception as err:  # orbax raises many types for damaged files
            return err
        if check_meta is not None:
            check_meta(meta)
        try:
            return self.restore(template, step)
        except Exception as err:
            return err

    def _warn(self, step: int, err: Exception, deleted: bool, steps: list[int]) -> None:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        earlier = [s for s in steps if s < step]
        fallback = f"falling back to step {earlier[0]}" if earlier else "no earlier checkpoint to fall back to"
        warnings.warn(
            f"checkpoint step {step} in {self.directory} is unreadable ({type(err).__name__}: {reason}); "
            f"{'deleted it; ' if deleted else ''}{fallback}",
            CheckpointWarning,
            stacklevel=3,
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
