"""TensorBoard event files of a run's records, next to its `metrics.jsonl` (`--tensorboard`).

Every number in a record becomes a point of the scalar series named by its key, at step
`weight_updates`: RSO and SGD runs then share one x axis (as in `curves.png`), and
`tensorboard --logdir WORKDIR` over experiments/compare.py's workdir overlays the two. Text
values (an RSO record's `layer`) are left out. Several runs advanced together write each run's
records into its own subdirectory, `run_<k>`, which TensorBoard shows as runs to overlay.

The files are written with tensorboardX, which needs only numpy and protobuf: the training
process does not import TensorFlow for them (`clu.metric_writers` writes through
`tf.summary`). They say what `metrics.jsonl` says: a run (re)started from a checkpoint writes
the records it resumes from again, behind a restart marker at step 0 (`purge_step`), from which
TensorBoard drops what the earlier files said, records past the checkpoint included.
"""

import numbers
import os
from collections.abc import Iterable

STEP = "weight_updates"  # the record key that steps every series
INSTALL = "pip install 'rsojax[tensorboard]'"


def check_installed() -> None:
    """Raises unless tensorboardX can be imported.

    Raises:
      ImportError: naming the `tensorboard` setting and the install command.
    """
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ImportError(f"tensorboard: writing TensorBoard event files needs tensorboardX: {INSTALL}") from None


class EventWriter:
    """Writes records as TensorBoard scalars into a directory, starting over from `records`.

    Args:
      logdir: the directory of the event files (a run's workdir).
      records: the records the run starts from (those restored from a checkpoint), written
        first; earlier event files in `logdir` are superseded.
    """

    def __init__(self, logdir: str, records: Iterable[dict] = ()):
        check_installed()
        from tensorboardX import SummaryWriter

        records = list(records)
        # Named by the records it starts from, a resumed run's file never replaces the file of
        # the run it resumes (tensorboardX names files by the second).
        self._writer = SummaryWriter(logdir, purge_step=0, filename_suffix=f".{len(records)}")
        for record in records:
            self.write(record)

    def write(self, record: dict) -> None:
        """Adds each number of `record` at step `record["weight_updates"]`, and flushes."""
        for key, value in record.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, record[STEP])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _NoEvents:
    """What `event_files` gives where no event files are written: a writer that writes nothing."""

    def write(self, record: dict) -> None:
        del record

    def close(self) -> None:
        pass


class _PerRun:
    """An `EventWriter` per run, in `logdir/run_<k>`; a record goes to its run's."""

    def __init__(self, logdir: str, runs: int, records: Iterable[dict]):
        records = list(records)
        self._writers = [
            EventWriter(os.path.join(logdir, f"run_{k}"), [r for r in records if r["run"] == k]) for k in range(runs)
        ]

    def write(self, record: dict) -> None:
        self._writers[record["run"]].write(record)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


def event_files(logdir: str | None, records: Iterable[dict] = (), runs: int | None = None) -> EventWriter | _NoEvents:
    """An `EventWriter` into `logdir`; with `logdir=None`, one that writes nothing.

    Args:
      logdir: the directory of the event files, or None to write none.
      records: the records the run starts from (`EventWriter`).
      runs: the number of runs advanced together, whose records carry their `run`: each run's
        event files go into `logdir/run_<k>` (None: a single run, into `logdir`).

    Returns:
      The writer: `write(record)` after each record is added to `metrics.jsonl`, `close()` at
      the end of the run.
    """
    if logdir is None:
        return _NoEvents()
    return EventWriter(logdir, records) if runs is None else _PerRun(logdir, runs, records)
