"""One experiment from one config: `train_and_evaluate(config, workdir)`, as Flax's examples do.

`ExperimentConfig` holds every setting of a run and its default (an `RSOConfig`, the SGD
baseline's `SGDConfig`, the data, the evaluator, checkpoints, devices); `TASKS` holds what
differs between MNIST and CIFAR-10 (data, network, evaluators, the paper's cycles). The
defaults are the paper's protocol. `parse_flags` turns the config's fields into command-line
flags (names, defaults, choices and help written once, in the fields' metadata), so the
scripts in `experiments/` stay thin.

`train_and_evaluate` validates every setting, the data and the workdir before it writes
anything, then trains, writing into the workdir:

- `config.json`: the config (a rerun must match it, but for `RESUMABLE`);
- `metrics.jsonl`: a record per RSO layer sweep or SGD epoch (`rsojax.train`);
- `checkpoints/`: orbax, at every record and every `checkpoint_every_s` seconds;
- `summary.json` and `curves.png` when the run ends.

Rerunning it with the same workdir resumes from the newest checkpoint and ends exactly as an
uninterrupted run would. With several processes (`distributed`), every process computes the
same run and only process 0 writes.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import textwrap
import time
import typing
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import optax

from rsojax import sharding
from rsojax.checkpoint import CheckpointError, Checkpointer
from rsojax.data import SOURCES, Dataset, load, load_npz
from rsojax.evaluators import EVALUATORS
from rsojax.layer_order import get_leaf
from rsojax.models import GLOBAL_POOLS, cifar10_resnet, mnist_convnet
from rsojax.records import write_json, write_records
from rsojax.rso import RSOConfig
from rsojax.train import SGDRun, Step, params_sha256, rso_trainer, run_rso, run_sgd, start_rso, start_sgd


class UsageError(Exception):
    """A bad setting, input or workdir: reported in one line, before any work is written."""


@dataclasses.dataclass(frozen=True)
class Task:
    """What differs between the experiments."""

    title: str
    source: str  # key of `rsojax.data.SOURCES`: the TFDS dataset and its preprocessing
    model: Callable  # (channels, global_pool) -> the paper's network
    evaluators: tuple[str, ...]  # keys of `rsojax.evaluators.EVALUATORS` that search it; the first is the default
    cycles: int  # the paper's


TASKS = {
    "mnist": Task("MNIST", "mnist", mnist_convnet, ("incremental", "cached", "generic"), 50),
    "cifar10": Task("CIFAR-10", "cifar10", cifar10_resnet, ("incremental", "cached", "generic"), 500),
}
OPTIMIZERS = ("rso", "sgd")
# Settings that may change between a run and its resumption (paths, timings, the host's role).
RESUMABLE = ("data_dir", "data", "download", "checkpoint_every_s", "progress_every_s", "coordinator_address", "process_id")
# The flags that switch a True default off, where they are not named no_<field>.
NEGATIONS = {"output_first": "input_first"}
# A CPU-sized first run, for --help and the README (about 5 minutes for MNIST on 2 cores).
FIRST_RUN = "--cycles 1 --batch_size 512 --train_subset 10000"


def _setting(default=None, help: str = "", choices=None, flag: str | None = "", factory=None):
    """A config field with the help (choices, flag name) the command lines show; `flag=None`:
    no flag, `flag=""`: the field's name."""
    metadata = {"help": help, "flag": flag} | ({"choices": tuple(choices)} if choices is not None else {})
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class SGDConfig:
    """The optax SGD baseline on the same network and data."""

    learning_rate: float = _setting(0.05, "SGD step size")
    momentum: float = _setting(0.9, "SGD momentum")
    batch_size: int = _setting(128, "minibatch")
    epochs: int = _setting(50, "epochs", flag="cycles")

    def __post_init__(self):
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            raise ValueError(f"learning_rate: expected a positive number, got {self.learning_rate!r}")
        if not (isinstance(self.momentum, int | float) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum: expected a value in [0, 1), got {self.momentum!r}")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("epochs", self.epochs, 1)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of an experiment; the defaults are the paper's MNIST protocol
    (`for_task` gives another task's). Fields are checked when the config is made."""

    task: str = _setting("mnist", "the experiment", TASKS, flag=None)
    optimizer: str = _setting("rso", "RSO, or the optax SGD baseline", OPTIMIZERS)
    rso: RSOConfig = _setting(help="RSO's hyperparameters", factory=RSOConfig)
    sgd: SGDConfig = _setting(help="the SGD baseline's", factory=SGDConfig)
    evaluator: str = _setting(
        "incremental", "how RSO computes candidate losses (all give the same decisions)", tuple(EVALUATORS)
    )
    kernels_only: bool = _setting(False, "search kernels only (Algorithm 1 as printed), not BN")
    channels: int = _setting(16, "conv channels (16: the paper's network)")
    global_pool: str = _setting("max", "the network's global pool (max: the reference code's)", GLOBAL_POOLS)
    seed: int = _setting(72, "sampling seed (minibatches and dw)")
    init_seed: int = _setting(420, "parameter initialisation seed")
    data_dir: str | None = _setting(None, "TFDS data directory (default: $TFDS_DATA_DIR, else TFDS's default)")
    data: str | None = _setting(None, "a .npz file with x_train, y_train, x_test, y_test, instead of TFDS")
    download: bool = _setting(False, "let TFDS download the data into --data_dir if it is missing")
    train_subset: int = _setting(0, "the first N training images (0: all)")
    chunk_size: int = _setting(576, "weights per compiled RSO call (a checkpoint can fall between two)")
    checkpoint_every_s: float = _setting(300.0, "also checkpoint inside a layer this often (seconds)")
    progress_every_s: float = _setting(30.0, "a progress line this often when stderr is not a terminal (seconds)")
    devices: int = _setting(0, "devices each minibatch is split over (0: all, of all processes)")
    distributed: bool = _setting(False, "join a multi-process run (jax.distributed.initialize)")
    coordinator_address: str | None = _setting(None, "with --distributed: process 0's host:port (default: $JAX_COORDINATOR_ADDRESS)")
    num_processes: int | None = _setting(None, "with --distributed (default: $JAX_NUM_PROCESSES)")
    process_id: int | None = _setting(None, "with --distributed (default: $JAX_PROCESS_ID)")

    @classmethod
    def for_task(cls, task: str, **changes) -> "ExperimentConfig":
        """The paper's protocol for `task` (a key of `TASKS`), with `changes`."""
        if task not in TASKS:
            raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
        t = TASKS[task]
        paper = cls(task=task, evaluator=t.evaluators[0], rso=RSOConfig(cycles=t.cycles), sgd=SGDConfig(epochs=t.cycles))
        return dataclasses.replace(paper, **changes)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {list(TASKS)}, got {self.task!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        task = TASKS[self.task]
        if self.evaluator not in task.evaluators:
            raise ValueError(f"evaluator: {self.evaluator!r} cannot search the {task.title} network; use {list(task.evaluators)}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool: expected one of {list(GLOBAL_POOLS)}, got {self.global_pool!r}")
        for name, low in (("channels", 1), ("chunk_size", 1), ("train_subset", 0), ("devices", 0), ("seed", 0), ("init_seed", 0)):
            _check_int(name, getattr(self, name), low)
        if not self.checkpoint_every_s >= 0:
            raise ValueError(f"checkpoint_every_s: expected a number of seconds >= 0, got {self.checkpoint_every_s!r}")
        if not self.progress_every_s > 0:
            raise ValueError(f"progress_every_s: expected a positive number of seconds, got {self.progress_every_s!r}")
        if self.data is not None and (self.data_dir is not None or self.download):
            raise ValueError("data: a .npz file replaces TFDS; leave out --data_dir and --download")
        for name in ("coordinator_address", "num_processes", "process_id"):
            if getattr(self, name) is not None and not self.distributed:
                raise ValueError(f"{name}: applies with --distributed only")

    @property
    def batch_size(self) -> int:
        """The chosen optimizer's batch size."""
        return self.rso.batch_size if self.optimizer == "rso" else self.sgd.batch_size

    @property
    def cycles(self) -> int:
        """The chosen optimizer's length: RSO cycles or SGD epochs."""
        return self.rso.cycles if self.optimizer == "rso" else self.sgd.epochs

    def is_paper_protocol(self) -> bool:
        """RSO with the paper's cycles and batch on the whole training set."""
        t = TASKS[self.task]
        return self.optimizer == "rso" and self.train_subset == 0 and self.rso == RSOConfig(cycles=t.cycles)


def _check_int(name: str, value, low: int):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name}: expected {kind}, got {value!r}")


# ---- command lines ---------------------------------------------------------------------


def _flags(config) -> dict[str, list[tuple[tuple[str, ...], dataclasses.Field, type]]]:
    """flag name -> the (path, field, type) it sets, from the fields of `config` and of its
    nested configs. A flag can set a field in each of `rso` and `sgd` (`--batch_size`)."""
    flags: dict[str, list] = {}

    def visit(obj, prefix):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                visit(value, (*prefix, f.name))
                continue
            flag = f.metadata.get("flag", "")
            if flag is None:
                continue
            kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
            if kind is bool and value:  # a True default is switched off by its negation
                flag = NEGATIONS.get(f.name, f"no_{f.name}")
            flags.setdefault(flag or f.name, []).append(((*prefix, f.name), f, kind))

    visit(config, ())
    return flags


def _help(path, f, default) -> str:
    text = f.metadata.get("help", "")
    if isinstance(default, bool) and default:
        return f"sets {path[-1]} to False: {text}"
    return text if default is None or default is False else f"{text} [default: {default}]"


def parser(task: str = "mnist", prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The command line of an experiment: `--workdir` and a flag per config field, with the
    defaults of `ExperimentConfig.for_task(task)`."""
    default, t = ExperimentConfig.for_task(task), TASKS[task]
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill(
            f"With only --workdir this runs the paper's protocol: RSO, {t.cycles} cycles at batch "
            f"{default.rso.batch_size} on the whole {t.title} training set, which is GPU work. "
            f"A first run on a CPU: {FIRST_RUN}."
        ),
    )
    p.add_argument("--workdir", required=True, help="where the run's files go; rerun with it to resume")
    for flag, targets in _flags(default).items():
        (path, f, kind), shared = targets[0], len(targets) > 1
        value = _get(default, path)
        if shared:  # one flag for the chosen optimizer's field
            text = "; ".join(f"{p_[0].upper()}: {_help(p_, f_, _get(default, p_))}" for p_, f_, _ in targets)
        else:
            text = _help(path, f, value)
        kwargs = {"default": argparse.SUPPRESS, "help": text, "dest": flag}
        choices = t.evaluators if flag == "evaluator" else f.metadata.get("choices")
        if kind is bool:
            kwargs["action"] = "store_false" if value else "store_true"
        else:
            kwargs |= {"type": kind, "choices": choices, "metavar": kind.__name__.upper() if kind in (int, float) else None}
        p.add_argument(f"--{flag}", **kwargs)
    return p


def parse_flags(argv=None, task: str = "mnist", prog: str | None = None, description: str | None = None):
    """`(config, workdir)` from command-line flags (`parser`). Flags left out keep the task's
    defaults; a flag shared by RSO and SGD (`--batch_size`, `--cycles`) sets the chosen
    optimizer's.

    Raises:
      UsageError: a setting out of its range (naming the flag).
    """
    args = vars(parser(task, prog, description).parse_args(argv))
    workdir = args.pop("workdir")
    default = ExperimentConfig.for_task(task)
    flags = _flags(default)
    optimizer = args.get("optimizer", default.optimizer)
    changes = {}
    for flag, value in args.items():
        targets = flags[flag]
        path = next(p for p, _, _ in targets if len(targets) == 1 or p[0] == optimizer)
        changes[path] = value
    try:
        return _with(default, changes), workdir
    except ValueError as e:
        raise UsageError(_flagged(str(e))) from None


def _get(obj, path):
    for name in path:
        obj = getattr(obj, name)
    return obj


def _with(config, changes: dict):
    """`config` with `changes` ({path: value}) applied, nested configs rebuilt (and checked)."""
    top = {p[0]: v for p, v in changes.items() if len(p) == 1}
    for name in {p[0] for p in changes if len(p) > 1}:
        top[name] = _with(getattr(config, name), {p[1:]: v for p, v in changes.items() if len(p) > 1 and p[0] == name})
    return dataclasses.replace(config, **top)


def _flagged(message: str) -> str:
    """A message that starts with a field's name ("batch_size: ..."), with the name of its flag
    ("--batch_size: ..."). Messages about the data itself ("data: x_train ...") keep theirs."""
    name, sep, rest = message.partition(":")
    if not sep or name == "data":
        return message
    names = {path[-1]: flag for flag, targets in _flags(ExperimentConfig()).items() for path, _, _ in targets}
    names |= {"n_devices": "devices", "workdir": "workdir"}
    return f"--{names[name]}:{rest}" if name in names else message


def cli(main: Callable[[], object], prog: str) -> int:
    """Runs `main()` for a command line: a `UsageError` becomes one line on stderr and exit
    code 2, Ctrl-C exit code 130 with the advice to resume."""
    try:
        main()
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


# ---- the run -------------------------------------------------------------------------------


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
    with open(metrics_path if writer else os.devnull, "a") as metrics_file:
        for step in training.steps(start):
            if step.record is not None:
                records.append(step.record)
                metrics_file.write(json.dumps(step.record) + "\n")
                metrics_file.flush()
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
        raise UsageError(_flagged(str(e))) from None
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


def load_data(config: ExperimentConfig) -> Dataset:
    """The task's data as `config` says: from `config.data` (.npz), else from TFDS."""
    task = TASKS[config.task]
    if config.data is not None:
        return load_npz(config.data, config.train_subset, SOURCES[task.source].per_channel_mean)
    return load(task.source, config.data_dir, config.train_subset, config.download)


def build_model(config: ExperimentConfig):
    """The task's network as `config` says (channels, global pool)."""
    return TASKS[config.task].model(channels=config.channels, global_pool=config.global_pool)


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
        raise UsageError(_flagged(error))
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
