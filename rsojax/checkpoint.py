"""Checkpoints of whole training states with orbax, and their safe restoration.

A state is any pytree of arrays (typed PRNG keys included) plus a JSON-able dict of metadata
(for a run: the records so far). Orbax writes each checkpoint into a temporary directory and
renames it when complete, so a process killed mid-write, or a write that fails (a full disk),
leaves the previous checkpoint intact; the failure is an `OSError` naming the step's directory.
Restoring takes the newest checkpoint that reads back whole; newer ones that do not (a file
damaged on disk or in a copy) are set aside, renamed `<step>.damaged-<time>` where orbax does
not see them, so that the run can write those steps again.
"""

import contextlib
import dataclasses
import logging
import os
import re
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be restored."""


def _is_key(a) -> bool:
    return isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _savable(tree):
    """Typed PRNG keys as their raw uint32 data, everything as host numpy arrays."""
    return jax.tree.map(lambda a: np.asarray(jax.random.key_data(a) if _is_key(a) else a), tree)


class Checkpointer:
    """Numbered checkpoints of one run in `directory`, the newest `keep` kept, written and read
    by the calling process only (in a multi-process run: by process 0, see `rsojax.sharding`)."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, cleanup_tmp_directories=True)
        if jax.process_count() > 1:  # this process alone saves, with no barrier on the others
            epath.Path(self.directory).mkdir(parents=True, exist_ok=True)  # orbax will not with active_processes
            alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})
            options = dataclasses.replace(options, create=False, multiprocessing_options=alone)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        """Writes checkpoint `step` and returns once it is complete on disk.

        Raises:
          OSError: the file system refused a write (a full disk, a quota), with the step's
            directory as its filename; the checkpoints before it are intact.
        """
        args = ocp.args.Composite(state=ocp.args.StandardSave(_savable(state)), meta=ocp.args.JsonSave(meta))
        try:
            with _orbax_errors_unlogged():
                self._manager.save(step, args=args, force=True)
                self._manager.wait_until_finished()
        except Exception as e:
            code = _os_error(e)
            if code is None:
                raise
            raise OSError(code, os.strerror(code), os.path.join(self.directory, str(step))) from e

    def close(self) -> None:
        """Waits for the manager's background work (cleanup of old checkpoints) and stops it."""
        self._manager.close()

    def restore(self, template):
        """The newest checkpoint that restores, as `(step, state, meta)`; None if there is none.

        Newer checkpoints that do not restore are set aside (renamed `<step>.damaged-<time>`, out
        of orbax's view), each with a warning that names it. Nothing is set aside when none
        restores: a state of another structure fails on every checkpoint alike.

        Args:
          template: a state of the same structure (shapes, dtypes, which leaves are keys).

        Raises:
          CheckpointError: there are checkpoints, and none restores.
        """
        steps = self.steps()
        if not steps:
            return None
        target = _savable(template)
        failed = []
        for step in reversed(steps):
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
                with _orbax_errors_unlogged():
                    restored = self._manager.restore(step, args=args)
            except Exception as e:  # a damaged or partial checkpoint: try the one before
                failed.append((step, _first_line(e)))
                _drop_closed_loop_callbacks()
                continue
            for bad, reason in failed:
                aside = self._set_aside(bad)
                log.warning("checkpoint %d cannot be restored (%s): set aside as %s; resuming from checkpoint %d",
                            bad, reason, aside, step)
            if failed:
                self._manager.reload()
            state = jax.tree.map(
                lambda t, a: jax.random.wrap_key_data(a, impl=jax.random.key_impl(t)) if _is_key(t) else jax.numpy.asarray(a),
                template,
                restored["state"],
            )
            return step, state, dict(restored["meta"])
        raise CheckpointError(
            f"workdir: no checkpoint in {self.directory} can be restored (steps {', '.join(str(s) for s, _ in failed)}; "
            f"the newest: {failed[0][1]}); to start the run again from "
            f"the beginning move that directory aside (mv {self.directory} {self.directory}.damaged), "
            "or use a new --workdir"
        )

    def _set_aside(self, step: int) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside, n = os.path.join(self.directory, f"{step}.damaged-{stamp}"), 1
        while os.path.exists(aside):
            n += 1
            aside = os.path.join(self.directory, f"{step}.damaged-{stamp}-{n}")
        os.rename(os.path.join(self.directory, str(step)), aside)
        return aside


def _first_line(e: Exception, limit: int = 160) -> str:
    text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _os_error(e: BaseException) -> int | None:
    """The errno of the OS error behind an exception of orbax or TensorStore, if it is one."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.errno
        match = re.search(r"os_error_code='?(\d+)", str(e))  # TensorStore's status text
        if match:
            return int(match.group(1))
        e = e.__cause__ or e.__context__
    return None


def _drop_closed_loop_callbacks():
    """Once a restore has failed, TensorStore still completes the reads that were in flight, and
    their callbacks find orbax's event loop closed: Python reports each as an unraisable
    `RuntimeError('Event loop is closed')`, a traceback on stderr after the failure itself was
    handled. Those reports, and only those, are dropped from then on."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


class _OrbaxErrors(logging.Filter):
    def filter(self, record):
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


@contextlib.contextmanager
def _orbax_errors_unlogged():
    """Orbax logs the failures of its worker threads with their tracebacks (on absl's logger);
    the caller gets the same failure as an exception, so they are not logged twice."""
    logger, quiet = logging.getLogger("absl"), _OrbaxErrors()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
