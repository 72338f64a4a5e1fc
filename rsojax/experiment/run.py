"""`train_and_evaluate(config, workdir)`: one experiment, checked, trained, written, resumable."""

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import jax
import numpy as np
import optax

from rsojax import memory, sharding
from rsojax.checkpoint import Checkpointer, CheckpointError
from rsojax.data import Dataset
from rsojax.evaluators import EVALUATORS
from rsojax.experiment import preemption
from rsojax.experiment import workdir as workdirs
from rsojax.experiment.config import FIRST_RUN, TASKS, ExperimentConfig, UsageError, build_model, load_data
from rsojax.experiment.flags import flagged
from rsojax.experiment.preemption import Preempted, StopSignals
from rsojax.experiment.workdir import WorkdirLock, WriteError, writing
from rsojax.records import append_record, runs_by_sweep, spread, summarize_runs, write_json, write_records
from rsojax.tensorboard import check_installed, event_files
from rsojax.train import (
    SGDRun,
    Step,
    params_sha256,
    rso_trainer,
    run_rso,
    run_sgd,
    start_rso,
    start_rso_runs,
    start_sgd,
)


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged (a notebook or a test replaces it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


# The library's lines (the run's, and the warnings of rsojax.checkpoint) go to stderr with a time.
_library_log = logging.getLogger("rsojax")
if not _library_log.handlers:  # absl configures the root logger when TensorFlow loads: keep our own
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    _library_log.addHandler(_handler)
    _library_log.setLevel(logging.INFO)
    _library_log.propagate = False
log = logging.getLogger("rsojax.experiment")


def train_and_evaluate(config: ExperimentConfig, workdir: str) -> dict:
    """Trains and evaluates as `config` says, writing the run's files into `workdir`.

    Resumes the run in `workdir` if there is one (it must have the same config, but for
    `RESUMABLE` settings); a finished run is not rerun. Every setting, the data and the
    workdir are checked before anything is written, so a refused run leaves the workdir as it
    was and the corrected call can use it. Process 0 holds the workdir's lock while it runs.

    Args:
      config: every setting of the run (`parse_flags` makes one from a command line).
      workdir: the directory of the run's files; made if missing.

    Returns:
      The summary (`summary.json`): final and best test accuracy, weight updates, training
      time, `params_sha256`, the config, the devices; for several runs (`config.runs`), each
      run's labels, accuracies and `params_sha256` (`runs`) and their spread (`across_runs`,
      `by_sweep`) instead of one run's; `{}` on processes other than 0.

    Raises:
      UsageError: a bad setting, data or workdir, a workdir in use or holding another run, or
        checkpoints none of which can be restored.
      Preempted: SIGTERM, SIGUSR1 or Ctrl-C stopped the run after a checkpoint.
      WriteError: a file of the run could not be written (the newest checkpoint is intact).
    """
    _say_if_paper_protocol(config)
    writer = _join_processes(config)
    lock = WorkdirLock(workdir) if writer else None
    try:
        with StopSignals() as signals:
            _on_process_0(lambda: workdirs.check(workdir, config, lock))
            mesh, data, training = _prepare(config)
            # Everything is checked: from here on the workdir is written (by process 0).
            _on_process_0(lambda: workdirs.create(workdir, config, lock))
            with _checkpoints(workdir, writer) as checkpointer:
                start, records, finished = _resume(checkpointer, training.fresh)
                if finished:
                    summary = _read_summary(workdir) if writer else {}
                    if summary is not None:
                        return _already_finished(summary, workdir)
                else:
                    _say_start(config, data, mesh, start)
                    start = _train(config, training, start, records, checkpointer, workdir, signals)
                return _finish(config, mesh, start, records, checkpointer, workdir, finished_saved=finished)
    finally:
        if lock is not None:
            lock.release()


def _say_if_paper_protocol(config: ExperimentConfig):
    if config.is_paper_protocol():
        log.info(
            "the paper's protocol: RSO, %d cycles at batch %d on the whole %s training set (GPU work; "
            "a first run on a CPU: %s)", config.rso.cycles, config.rso.batch_size, TASKS[config.task].title, FIRST_RUN,
        )


def _join_processes(config: ExperimentConfig) -> bool:
    """Joins a multi-process run if asked; whether this process writes the workdir (process 0:
    the others compute the same run and write nothing)."""
    if config.distributed:  # unset values come from the environment or the cluster (Slurm, Open MPI)
        sharding.distributed_init(config.coordinator_address, config.num_processes, config.process_id)
    writer = jax.process_index() == 0
    if not writer:
        log.setLevel(logging.WARNING)
    return writer


def _on_process_0(check: Callable[[], None]):
    """Runs `check` on process 0 and raises its `UsageError` on every process."""
    error = None
    if jax.process_index() == 0:
        try:
            check()
        except UsageError as e:
            error = str(e)
    if jax.process_count() > 1:
        error = sharding.broadcast_json(error)
    if error:
        raise UsageError(error)


@contextmanager
def _checkpoints(workdir: str, writer: bool):
    """The run's `Checkpointer` on process 0 (None on the others), closed when the run ends.

    Made after the data is loaded: TFDS's mock file system (tests) is active while a dataset
    loads, and would catch the checkpoint manager's background file operations.
    """
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints")) if writer else None
    try:
        yield checkpointer
    finally:
        if checkpointer is not None:
            checkpointer.close()


def _resume(checkpointer: Checkpointer | None, fresh: Step) -> tuple[Step, list, bool]:
    """`(step, records, finished)` of the newest checkpoint that restores (`fresh`, [] and False if
    there is none). With several processes, process 0 reads it and sends it to the others.

    Raises:
      UsageError: there are checkpoints, and none restores.
    """
    found, error = None, None
    if checkpointer is not None:
        try:
            found = checkpointer.restore(fresh.run)
        except CheckpointError as e:
            error = str(e)
    if jax.process_count() > 1:
        meta, error = sharding.broadcast_json([found and found[2], error])
        found = None if meta is None else (None, sharding.broadcast_tree(found[1] if found else fresh.run), meta)
    if error:
        raise UsageError(flagged(error))
    if found is None:
        return fresh, [], False
    _, run, meta = found
    return Step(run, meta["weight_updates"], meta["wall_time_s"]), list(meta["records"]), meta["finished"]


def _read_summary(workdir: str) -> dict | None:
    """The finished run's summary; None if it has none, with a warning if it cannot be read."""
    path = os.path.join(workdir, "summary.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s cannot be read (%s: %s); writing it again from the final checkpoint", path, type(e).__name__, e)
        return None


def _already_finished(summary: dict, workdir: str) -> dict:
    if summary:  # process 0
        log.info("the run in %s has finished already: %s", workdir, _result(summary))
    return summary


def _say_start(config: ExperimentConfig, data: Dataset, mesh, start: Step):
    runs = config.runs
    log.info(
        "%s%s on %d %s training images, %s x%d in %d process(es), %s",
        config.optimizer, f", {len(runs)} runs" if runs else "", data.x_train.shape[0], TASKS[config.task].title,
        jax.devices()[0], 1 if mesh is None else mesh.size, jax.process_count(),
        f"resuming after {start.weight_updates:,} weight updates" if start.weight_updates else "from the start",
    )


def _train(config: ExperimentConfig, training: "_Training", start: Step, records: list, checkpointer, workdir: str,
           signals: StopSignals) -> Step:
    """Runs `training` from `start` to its end, adding to `records` and writing them and
    checkpoints (process 0); returns the last step.

    Before the first chunk and after each one, every process takes the same decision
    (`StopSignals.agree`): go on, or stop there, after a checkpoint, on a signal (`Preempted`)
    or a failed write (`WriteError`).
    """
    if (decision := signals.agree()) != preemption.GO_ON:  # a signal while the data loaded or the checkpoint was read
        raise _stopped(signals, decision, f"before training, at {training.position(start)[1]}")
    metrics = os.path.join(workdir, "metrics.jsonl") if checkpointer is not None else None
    if metrics is not None:
        with writing(metrics):  # the records of the checkpoint resumed from, nothing after it
            write_records(metrics, records)
    progress = Progress(training.total, training.position(start)[0], config.progress_every_s, metrics is not None,
                        training.unit)
    step, last_save = start, time.monotonic()
    runs = config.runs
    events = event_files(workdir if metrics is not None and config.tensorboard else None, records,
                         None if runs is None else len(runs))
    try:
        for step in training.steps(start):
            saved, failure = False, None
            try:
                if step.record is not None:
                    _add_record(step.record, records, metrics, events, progress)
                progress.update(*training.position(step))
                if step.record is not None or time.monotonic() - last_save >= config.checkpoint_every_s:
                    _save(checkpointer, step, records, finished=False)
                    saved, last_save = True, time.monotonic()
            except WriteError as e:
                failure = e
            decision = signals.agree(failed=failure is not None)
            if failure is not None:
                raise failure
            if decision == preemption.FAILED:
                raise WriteError("process 0 could not write the workdir (its error names the file); fix it and "
                                 "rerun the same command to resume")
            if decision != preemption.GO_ON:
                if not saved:
                    _save(checkpointer, step, records, finished=False)
                raise _stopped(signals, decision, f"at {training.position(step)[1]}, after a checkpoint of "
                                                  f"{step.weight_updates:,} weight updates in {workdir}")
    finally:
        events.close()
        progress.close()
    return step


def _stopped(signals: StopSignals, decision: int, when: str) -> Preempted:
    return Preempted(f"stopped by {signals.name(decision)} {when}; rerun the same command to resume",
                     interrupted=decision == preemption.INTERRUPT)


def _add_record(record: dict | list[dict], records: list, metrics: str | None, events, progress: "Progress"):
    """The one place a finished record goes: the run's records, `metrics.jsonl` and the
    TensorBoard events (process 0), the log. Several runs' records (a list) go there one by
    one, in run order, and make one line of the log."""
    several = record if isinstance(record, list) else [record]
    for one in several:
        records.append(one)
        if metrics is not None:
            with writing(metrics):
                append_record(metrics, one)
            events.write(one)
    if isinstance(record, list):
        acc = spread([r["test_accuracy"] for r in record])
        first = record[0]
        progress.note(
            f"cycle={first['cycle']} layer={first['layer']} weight_updates={first['weight_updates']} "
            f"wall_time_s={first['wall_time_s']:.4g} test_accuracy over {acc['n']} runs: mean={acc['mean']:.4g} "
            f"std={acc['std']:.4g} min={acc['min']:.4g} max={acc['max']:.4g}"
        )
        return
    progress.note(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))


def _finish(config: ExperimentConfig, mesh, step: Step, records: list, checkpointer, workdir: str,
            finished_saved: bool) -> dict:
    """Writes the curves, `summary.json` and the final checkpoint (process 0); the summary."""
    params = step.run.params if isinstance(step.run, SGDRun) else step.run.state.params
    if config.runs is None:
        result = {
            "test_accuracy": records[-1]["test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in records),
        }
    else:
        result, params = summarize_runs(records), jax.device_get(params)  # runs taken apart on the host
        for run in result["runs"]:
            run["params_sha256"] = params_sha256(jax.tree.map(lambda a, k=run["run"]: a[k], params))
    summary = {
        "task": config.task,
        "optimizer": config.optimizer,
        "config": dataclasses.asdict(config),
        **result,
        "weight_updates": records[-1]["weight_updates"],
        "wall_time_s": records[-1]["wall_time_s"],
        **({"params_sha256": params_sha256(params)} if config.runs is None else {}),
        "precision": config.rso.precision,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        **sharding.describe(mesh),
    }
    if checkpointer is None:
        return {}
    from rsojax.plots import plot_curves, plot_runs  # matplotlib only where curves are drawn

    name = config.optimizer.upper()
    curves, summary_path = os.path.join(workdir, "curves.png"), os.path.join(workdir, "summary.json")
    with writing(curves):
        if config.runs is None:
            plot_curves({name: records}, curves, title=f"{TASKS[config.task].title}, {name}")
        else:
            plot_runs(runs_by_sweep(records), curves, title=f"{TASKS[config.task].title}, {name}, {len(config.runs)} runs")
    with writing(summary_path):
        write_json(summary_path, summary)
    if not finished_saved:
        _save(checkpointer, step, records, finished=True)
    log.info("%s, %s", _result(summary), workdir)
    return summary


def _result(summary: dict) -> str:
    if "across_runs" in summary:
        final, best = (summary["across_runs"][k] for k in ("test_accuracy", "best_test_accuracy"))
        accuracy = (
            f"{final['n']} runs: test accuracy {final['mean']:.4f} ± {final['std']:.4f} (min {final['min']:.4f}, "
            f"max {final['max']:.4f}; best {best['mean']:.4f} ± {best['std']:.4f})"
        )
    else:
        accuracy = f"test accuracy {summary['test_accuracy']:.4f} (best {summary['best_test_accuracy']:.4f})"
    return f"{accuracy} after {summary['weight_updates']:,} weight updates, {summary['wall_time_s']:.0f} s of training"


class _Training(NamedTuple):
    """A checked run, ready to start or resume."""

    fresh: Step  # the step before any work
    steps: Callable[[Step], Iterator[Step]]  # the steps after a given one, to the end
    total: int  # the work of the whole run, in `unit`s
    unit: str  # "weight" (RSO: weight visits) or "epoch" (SGD)
    position: Callable[[Step], tuple[int, str]]  # a step's work done, in units, and where the run is


def _prepare(config: ExperimentConfig) -> tuple:
    """`(mesh, data, training)`, every setting checked against the devices and the data.

    Raises:
      UsageError: a bad setting or data, naming the flag (or the data's key).
    """
    task = TASKS[config.task]
    try:
        if config.tensorboard:
            check_installed()
        mesh = sharding.make_mesh(config.devices)
        sharding.check_batch(config.batch_size, mesh)
        data = load_data(config)
        model = build_model(config)
        if tuple(data.x_train.shape[1:]) != tuple(model.input_shape):
            raise ValueError(
                f"data: the {task.title} network takes images of shape {tuple(model.input_shape)}, "
                f"the data has {tuple(data.x_train.shape[1:])}"
            )
        if config.optimizer == "rso" and config.runs is not None:
            return mesh, data, _rso_training(config, model, data, _runs_mesh(config, mesh))
        if config.optimizer == "rso":
            return mesh, data, _rso_training(config, model, data, mesh)
        n = data.x_train.shape[0]
        if config.sgd.batch_size > n:
            raise ValueError(f"batch_size: {config.sgd.batch_size} is larger than the training set ({n} images)")
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise UsageError(flagged(str(e))) from None
    optimizer = optax.sgd(config.sgd.learning_rate, momentum=config.sgd.momentum)
    epochs = config.sgd.epochs

    def steps(start):
        return run_sgd(model, data, optimizer, start, epochs=epochs, batch_size=config.sgd.batch_size, seed=config.seed,
                       mesh=mesh, precision=config.rso.precision)

    def position(step):
        return int(step.run.epoch), f"epoch {int(step.run.epoch)}/{epochs}"

    return mesh, data, _Training(start_sgd(model, optimizer, config.init_seed), steps, epochs, "epoch", position)


def _runs_mesh(config: ExperimentConfig, mesh):
    """Several runs over several devices: each device its share of the runs (a 'runs' mesh
    axis), every minibatch on one device. One process: its records read every run."""
    if mesh.size == 1:
        return None
    if jax.process_count() > 1:
        raise ValueError("distributed: several runs at once run in one process (on its devices)")
    if len(config.runs) % mesh.size:
        raise ValueError(f"devices: {len(config.runs)} runs do not divide over {mesh.size} devices; use --devices 1 or a divisor")
    return sharding.make_mesh(mesh.size, runs=mesh.size)


def _rso_training(config: ExperimentConfig, model, data: Dataset, mesh) -> _Training:
    rso = rso_trainer(model, config.rso, EVALUATORS[config.evaluator](model), config.kernels_only, mesh)
    runs = config.runs
    if runs is None:
        fresh = start_rso(rso, model, data, config.seed, config.init_seed)
    else:
        fresh = start_rso_runs(rso, model, data, runs)
        memory.check_fits(rso, fresh.run.state, (data.x_train, data.y_train), what="seeds")
    cycles = config.rso.cycles

    def steps(start):
        return run_rso(rso, model, data, start, chunk_size=config.chunk_size, runs=runs)

    def position(step):
        if step.record is not None:  # the step after a sweep: name the layer just finished
            record = step.record[0] if isinstance(step.record, list) else step.record
            return step.weight_updates, f"cycle {record['cycle'] + 1}/{cycles}, {record['layer']}"
        cycle = int(np.ravel(jax.device_get(step.run.state.cycle))[0])  # the runs advance together
        return step.weight_updates, f"cycle {cycle + 1}/{cycles}, {rso.layers[int(step.run.layer)]}"

    # the weights one run visits per cycle (several runs advance together)
    per_cycle = sum(rso.n_weights(fresh.run.state, path) for path in rso.layers)
    return _Training(fresh, steps, cycles * per_cycle, "weight", position)


def _save(checkpointer: Checkpointer | None, step: Step, records: list, finished: bool):
    if checkpointer is None:  # not process 0
        return
    meta = {"records": records, "weight_updates": step.weight_updates, "wall_time_s": step.wall_time_s, "finished": finished}
    # SGD steps count epochs; RSO steps count weights visited: both increase with every save.
    number = int(step.run.epoch) if isinstance(step.run, SGDRun) else step.weight_updates
    with writing(checkpointer.directory):
        checkpointer.save(number + int(finished), step.run, meta)


class Progress:
    """How far a run is, on stderr: a tqdm bar (where, done, time left) when stderr is a
    terminal, else a plain line every `every_s` seconds (a log file, nohup, a notebook)."""

    def __init__(self, total: int, done: int, every_s: float, enabled: bool = True, unit: str = "weight"):
        self.total, self.unit, self.every_s, self.enabled = total, unit, every_s, enabled
        self.start, self.tic = done, time.monotonic()
        self.last_line = self.tic
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr)

    def update(self, done: int, where: str):
        if self.bar is not None:
            self.bar.set_description(where, refresh=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if not self.enabled or now - self.last_line < self.every_s or done >= self.total:
            return
        self.last_line = now
        rate = (done - self.start) / (now - self.tic)
        left = f", about {_duration((self.total - done) / rate)} left" if rate > 0 else ""
        log.info(
            "%s: %s of %s %ss (%.1f%%), %s elapsed%s",
            where, f"{done:,}", f"{self.total:,}", self.unit, 100 * done / self.total, _duration(now - self.tic), left,
        )

    def note(self, message: str):
        """Logs a line without breaking the bar (it counts as the periodic line)."""
        if self.bar is None:
            log.info(message)
            self.last_line = time.monotonic()
            return
        with self.bar.external_write_mode(file=sys.stderr):
            log.info(message)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
