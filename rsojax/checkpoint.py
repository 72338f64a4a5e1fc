"""Checkpoints of whole training states with orbax, and their safe restoration.

A state is any pytree of arrays (typed PRNG keys included) plus a JSON-able dict of metadata
(for a run: the records so far). Orbax writes each checkpoint into a temporary directory and
renames it when complete, so a process killed mid-write leaves the previous checkpoint
intact. Restoring takes the newest checkpoint that reads back whole; if the newest is
damaged, it says so and falls back to the one before.
"""

import dataclasses
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


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
        """Writes checkpoint `step` and returns once it is complete on disk."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(_savable(state)), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the manager's background work (cleanup of old checkpoints) and stops it."""
        self._manager.close()

    def restore(self, template):
        """The newest readable checkpoint as `(step, state, meta)`, or None if there is none.

        Args:
          template: a state of the same structure (shapes, dtypes, which leaves are keys).
        """
        steps = self.steps()
        if not steps:
            return None
        target = _savable(template)
        errors = []
        for step in reversed(steps):
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
                restored = self._manager.restore(step, args=args)
            except Exception as e:  # a damaged or partial checkpoint: try the one before
                logging.warning("checkpoint %d in %s cannot be read (%s); trying the previous one", step, self.directory, e)
                errors.append(f"{step}: {type(e).__name__}")
                continue
            state = jax.tree.map(
                lambda t, a: jax.random.wrap_key_data(a, impl=jax.random.key_impl(t)) if _is_key(t) else jax.numpy.asarray(a),
                template,
                restored["state"],
            )
            return step, state, dict(restored["meta"])
        raise CheckpointError(
            f"workdir: no checkpoint in {self.directory} could be read ({', '.join(errors)}); "
            "remove the damaged ones or start in a new workdir"
        )
