"""`train_and_evaluate(config, workdir)`: one experiment, checked, trained, written, resumable."""

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import optax

from rsojax import sharding
from rsojax.checkpoint import CheckpointError, Checkpointer
from rsojax.data import Dataset
from rsojax.evaluators import EVALUATORS
from rsojax.experiment.config import FIRST_RUN, RESUMABLE, TASKS, ExperimentConfig, UsageError, build_model, load_data
from rsojax.experiment.flags import flagged
from rsojax.layer_order import get_leaf
from rsojax.records import write_json, write_records
from rsojax.tensorboard import check_installed, event_files
from rsojax.train import SGDRun, Step, params_sha256, rso_trainer, run_rso, run_sgd, start_rso, start_sgd


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged (a notebook or a test replaces it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


log = logging.getLogger("rsojax.experiment")
if not log.handlers:  # absl configures the root logger when TensorFlow loads: keep our own
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def train_and_evaluate(config: ExperimentConfig, workdir: str) -> dict:
    """Trains and evaluates as `config` says, writing the run's files into `workdir`.

    Resumes the run in `workdir` if there is one (it must have the same config, but for
    `RESUMABLE` settings); a finished run is not rerun. Every setting, the data and the
    workdir are checked before anything is written, so a refused run leaves the workdir as it
    was and the corrected call can use it.

    Returns:
      The summary (`summary.json`): final and best test accuracy, weight updates, training
      time, `params_sha256`, the config, the devices; `{}` on processes other than 0.

    Raises:
      UsageError: a bad setting, data or workdir, or a workdir holding another run.
    """
    task = TASKS[config.task]
    if config.is_paper_protocol():
        log.info(
            "the paper's protocol: RSO, %d cycles at batch %d on the whole %s training set (GPU work; "
            "a first run on a CPU: %s)", config.rso.cycles, config.rso.batch_size, task.title, FIRST_RUN,
        )
    if config.distributed:  # unset values come from the environment or the cluster (Slurm, Open MPI)
        sharding.distributed_init(config.coordinator_address, config.num_processes, config.process_id)
    writer = jax.process_index() == 0  # the other processes compute the same run and write nothing
    if writer:
        _check_workdir(workdir, config)
    else:
        log.setLevel(logging.WARNING)
    mesh, data, training = _prepare(config)

    # Everything is checked: from here on the workdir is written (by process 0).
    summary_path = os.path.join(workdir, "summary.json")
    if writer:
        _create_workdir(workdir, config)
    # Made after the data is loaded: TFDS's mock file system (tests) is active while a
    # dataset loads, and would catch the checkpoint manager's background file operations.
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints")) if writer else None
    restored, meta = _restore(checkpointer, training.fresh)
    if restored and meta["finished"] and (os.path.exists(summary_path) or not writer):
        if checkpointer is not None:
            checkpointer.close()
        if not writer:
            return {}
        summary = json.load(open(summary_path))
        log.info("the run in %s has finished already: %s", workdir, _result(summary))
        return summary

    start = restored or training.fresh
    progress = Progress(training.total, training.position(start)[0], config.progress_every_s, writer, training.unit)
    log.info(
        "%s on %d %s training images, %s x%d in %d process(es), %s",
        config.optimizer, data.x_train.shape[0], task.title, jax.devices()[0], mesh.size, jax.process_count(),
        f"resuming after {restored.weight_updates:,} weight updates" if restored else "from the start",
    )

    records = list(meta["records"]) if restored else []
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if writer:
        write_records(metrics_path, records)  # the records of the checkpoint resumed from, nothing after it
    step, last_save = start, time.monotonic()
    with (
        open(metrics_path if writer else os.devnull, "a") as metrics_file,
        event_files(workdir if writer and config.tensorboard else None, records) as events,
    ):
        for step in training.steps(start):
            if step.record is not None:
                records.append(step.record)
                metrics_file.write(json.dumps(step.record) + "\n")
                metrics_file.flush()
                events.write(step.record)
                progress.note(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in step.record.items()))
            progress.update(*training.position(step))
            if step.record is not None or time.monotonic() - last_save >= config.checkpoint_every_s:
                _save(checkpointer, step, records, finished=False)
                last_save = time.monotonic()
    progress.close()

    params = step.run.params if isinstance(step.run, SGDRun) else step.run.state.params
    summary = {
        "task": config.task,
        "optimizer": config.optimizer,
        "config": dataclasses.asdict(config),
        "test_accuracy": records[-1]["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in records),
        "weight_updates": records[-1]["weight_updates"],
        "wall_time_s": records[-1]["wall_time_s"],
        "params_sha256": params_sha256(params),
        "precision": config.rso.precision,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        **sharding.describe(mesh),
    }
    if not writer:
        return {}
    from rsojax.plots import plot_curves  # matplotlib only where curves are drawn

    name = config.optimizer.upper()
    plot_curves({name: records}, os.path.join(workdir, "curves.png"), title=f"{task.title}, {name}")
    write_json(summary_path, summary)
    _save(checkpointer, step, records, finished=True)
    checkpointer.close()
    log.info("%s, %s", _result(summary), workdir)
    return summary


def _result(summary: dict) -> str:
    return (
        f"test accuracy {summary['test_accuracy']:.4f} (best {summary['best_test_accuracy']:.4f}) after "
        f"{summary['weight_updates']:,} weight updates, {summary['wall_time_s']:.0f} s of training"
    )


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


def _rso_training(config: ExperimentConfig, model, data: Dataset, mesh) -> _Training:
    rso = rso_trainer(model, config.rso, EVALUATORS[config.evaluator](model), config.kernels_only, mesh)
    fresh = start_rso(rso, model, data, config.seed, config.init_seed)
    cycles = config.rso.cycles

    def steps(start):
        return run_rso(rso, model, data, start, chunk_size=config.chunk_size)

    def position(step):
        if step.record is not None:  # the step after a sweep: name the layer just finished
            return step.weight_updates, f"cycle {step.record['cycle'] + 1}/{cycles}, {step.record['layer']}"
        return step.weight_updates, f"cycle {int(step.run.state.cycle) + 1}/{cycles}, {rso.layers[int(step.run.layer)]}"

    per_cycle = sum(get_leaf(fresh.run.state.params, path).size for path in rso.layers)
    return _Training(fresh, steps, cycles * per_cycle, "weight", position)


def _flat(saved: dict, prefix: str = "") -> dict:
    """A saved config flattened: {"rso": {"batch_size": 5000}} -> {"rso.batch_size": 5000}."""
    out = {}
    for k, v in saved.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def _check_workdir(workdir: str, config: ExperimentConfig):
    """Refuses, writing nothing, a workdir that cannot be written or holds another run."""
    existing = workdir
    while not os.path.exists(existing) and os.path.dirname(os.path.abspath(existing)) != os.path.abspath(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir: {workdir} cannot be written ({existing} is not a writable directory)")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = _flat(json.load(f))
    current = _flat(json.loads(json.dumps(dataclasses.asdict(config))))
    differ = sorted(k for k in saved.keys() | current.keys() if k.split(".")[-1] not in RESUMABLE and saved.get(k) != current.get(k))
    if differ:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise UsageError(
            f"--workdir: {workdir} holds a run with another configuration ({changes}); "
            "use a new --workdir, or the saved settings to resume"
        )


def _create_workdir(workdir: str, config: ExperimentConfig):
    try:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "config.json")
        if not os.path.exists(path):
            write_json(path, dataclasses.asdict(config))
    except OSError as e:
        raise UsageError(f"--workdir: {workdir} cannot be written ({e.strerror})") from None


def _save(checkpointer: Checkpointer | None, step: Step, records: list, finished: bool):
    if checkpointer is None:  # not process 0
        return
    meta = {"records": records, "weight_updates": step.weight_updates, "wall_time_s": step.wall_time_s, "finished": finished}
    # SGD steps count epochs; RSO steps count weights visited: both increase with every save.
    number = int(step.run.epoch) if isinstance(step.run, SGDRun) else step.weight_updates
    checkpointer.save(number + int(finished), step.run, meta)


def _restore(checkpointer: Checkpointer | None, fresh: Step) -> tuple[Step | None, dict | None]:
    """The newest checkpoint as a Step and its metadata; (None, None) if there is none. With
    several processes, process 0 reads it and sends it to the others."""
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
        return None, None
    _, run, meta = found
    return Step(run, meta["weight_updates"], meta["wall_time_s"]), meta


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
