"""The experiment's settings: `ExperimentConfig` (every setting and its default) and the tasks.

The defaults are the paper's protocol; `ExperimentConfig.for_task` gives each task's. Each
field's metadata holds its help (and choices, and the flag's name where it differs), from which
`rsojax.experiment.flags` makes the command line.
"""

import dataclasses
from collections.abc import Callable

import jax

from rsojax.conv_kernel import CONVS, check_conv, resolve_conv
from rsojax.data import SOURCES, Dataset, load, load_npz
from rsojax.evaluators import EVALUATORS
from rsojax.models import GLOBAL_POOLS, cifar10_resnet, mnist_convnet
from rsojax.rso import SWEEPABLE, RSOConfig, setting
from rsojax.train import CHUNK_SIZE, INIT_SEED, SEED, run_labels


class UsageError(Exception):
    """A bad setting, input or workdir: reported in one line, before any work is written."""


@dataclasses.dataclass(frozen=True)
class Task:
    """What differs between the experiments.

    Attributes:
      title: the dataset's name in messages.
      source: a key of `rsojax.data.SOURCES`: the TFDS dataset and its preprocessing.
      model: `(channels, global_pool, conv) -> network`, the paper's network.
      evaluators: the keys of `rsojax.evaluators.EVALUATORS` that search it; the first is the
        default.
      cycles: the paper's number of cycles.
    """

    title: str
    source: str
    model: Callable
    evaluators: tuple[str, ...]
    cycles: int


TASKS = {
    "mnist": Task("MNIST", "mnist", mnist_convnet, ("incremental", "cached", "generic"), 50),
    "cifar10": Task("CIFAR-10", "cifar10", cifar10_resnet, ("incremental", "cached", "generic"), 500),
}
"""The experiments by name: the paper's MNIST and CIFAR-10 protocols."""
OPTIMIZERS = ("rso", "sgd")
"""The optimizers an experiment runs: RSO, or the optax SGD baseline."""
RESUMABLE = (
    "data_dir", "data", "download", "checkpoint_every_s", "progress_every_s", "tensorboard",
    "coordinator_address", "process_id",
)
"""The settings that may change between a run and its resumption (paths, timings, the host's role)."""
FIRST_RUN = "--cycles 1 --batch_size 512 --train_subset 10000"
"""A CPU-sized first run, for --help and the README (about 5 minutes for MNIST on 2 cores)."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """Seeds from the command line: "0-7" (a range, both ends included), "0,3,5", or both ("0-3,8").

    Raises:
      ValueError: not a list of seeds >= 0 and ranges, naming the seeds setting.
    """
    seeds = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ValueError(f"seeds: expected seeds such as 0-7 or 0,3,5, got {text!r}") from None
        if last < first:
            raise ValueError(f"seeds: the range {part.strip()} is empty; write it low-high")
        seeds += range(first, last + 1)
    return tuple(seeds)


def parse_sweep(text: str) -> dict[str, tuple[float, ...]]:
    """A sweep from the command line: "sigma_scale=0.5,1,2" -> {"sigma_scale": (0.5, 1.0, 2.0)}.

    Raises:
      ValueError: not NAME=VALUE,VALUE,..., naming the sweep setting.
    """
    name, eq, values = text.partition("=")
    try:
        parsed = tuple(float(v) for v in values.split(","))
    except ValueError:
        parsed = ()
    if not eq or not name.strip() or not parsed:
        raise ValueError(f"sweep: expected NAME=VALUE,VALUE,... (for example sigma_scale=0.5,1,2), got {text!r}")
    return {name.strip(): parsed}


def _runs_setting(default, help: str, parse: Callable[[str], object], metavar: str):
    """A `setting` given on the command line as text that `parse` reads (`rsojax.experiment.flags`)."""
    metadata = {**setting(help=help).metadata, "parse": parse, "metavar": metavar}
    return dataclasses.field(default_factory=lambda: default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class SGDConfig:
    """The optax SGD baseline on the same network and data."""

    learning_rate: float = setting(0.05, "SGD step size")
    momentum: float = setting(0.9, "SGD momentum")
    batch_size: int = setting(128, "minibatch")
    epochs: int = setting(50, "epochs", flag="cycles")

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

    task: str = setting("mnist", "the experiment", TASKS, flag=None)
    optimizer: str = setting("rso", "RSO, or the optax SGD baseline", OPTIMIZERS)
    rso: RSOConfig = setting(help="RSO's hyperparameters", factory=RSOConfig)
    sgd: SGDConfig = setting(help="the SGD baseline's", factory=SGDConfig)
    evaluator: str = setting(
        "incremental", "how RSO computes candidate losses (all give the same decisions)", tuple(EVALUATORS)
    )
    kernels_only: bool = setting(False, "search kernels only (Algorithm 1 as printed), not BN")
    channels: int = setting(16, "conv channels (16: the paper's network)")
    global_pool: str = setting("max", "the network's global pool (max: the reference code's)", GLOBAL_POOLS)
    conv: str = setting(
        "xla",
        "the 3x3 convolutions' backend: XLA's, a Pallas kernel with BN's statistics fused (GPUs only; "
        "docs/gpu-kernel.md), or auto (XLA until a GPU measurement says otherwise)",
        CONVS,
    )
    seed: int = setting(SEED, "sampling seed (minibatches and dw)")
    init_seed: int = setting(INIT_SEED, "parameter initialisation seed")
    seeds: tuple[int, ...] = _runs_setting(
        (), "several RSO runs, one per sampling seed, advanced together in one compiled program: 0-7 or 0,3,5 "
        "(default: the one run of --seed); docs/many-runs.md", parse_seeds, "SEEDS",
    )
    init_seeds: tuple[int, ...] = _runs_setting(
        (), "with --seeds: each run's initialisation seed, as many as --seeds (default: --init_seed for every run)",
        parse_seeds, "SEEDS",
    )
    sweep: dict = _runs_setting(
        {}, f"NAME=V1,V2,...: one run per value of NAME, one of {', '.join(SWEEPABLE)} (it replaces --NAME), "
        "each with every seed: values x seeds runs in one program; settings that shape the program (batch size, "
        "model, cycles, ...) are the same for all runs", parse_sweep, "NAME=VALUES",
    )
    data_dir: str | None = setting(None, "TFDS data directory (default: $TFDS_DATA_DIR, else TFDS's default)")
    data: str | None = setting(None, "a .npz file with x_train, y_train, x_test, y_test, instead of TFDS")
    download: bool = setting(False, "let TFDS download the data into --data_dir if it is missing")
    train_subset: int = setting(0, "the first N training images (0: all)")
    chunk_size: int = setting(CHUNK_SIZE, "weights per compiled RSO call (a checkpoint can fall between two)")
    checkpoint_every_s: float = setting(300.0, "also checkpoint inside a layer this often (seconds)")
    progress_every_s: float = setting(30.0, "a progress line this often when stderr is not a terminal (seconds)")
    tensorboard: bool = setting(False, "also write the records as TensorBoard event files into the workdir")
    devices: int = setting(
        0, "devices each minibatch is split over, or that several runs are spread over (0: all, of all processes)"
    )
    distributed: bool = setting(False, "join a multi-process run (jax.distributed.initialize)")
    coordinator_address: str | None = setting(None, "with --distributed: process 0's host:port (default: $JAX_COORDINATOR_ADDRESS)")
    num_processes: int | None = setting(None, "with --distributed (default: $JAX_NUM_PROCESSES)")
    process_id: int | None = setting(None, "with --distributed (default: $JAX_PROCESS_ID)")

    @classmethod
    def for_task(cls, task: str, **changes) -> "ExperimentConfig":
        """The paper's protocol for a task, with changes.

        Args:
          task: a key of `TASKS`.
          **changes: fields to set otherwise, as `dataclasses.replace` takes them.

        Returns:
          The config.

        Raises:
          ValueError: `task` is unknown, or a change is not a valid setting.
        """
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
        if resolve_conv(check_conv(self.conv)) == "pallas" and self.optimizer == "sgd":
            raise ValueError("conv: the SGD baseline differentiates the network, and the Pallas kernel has no gradient; use xla")
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
        self._check_runs()

    def _check_runs(self):
        # Lists (a config read back from config.json) become the tuples a config holds.
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "init_seeds", tuple(self.init_seeds))
        if not isinstance(self.sweep, dict):
            raise ValueError(f"sweep: expected {{name: values}}, got {self.sweep!r}")
        object.__setattr__(self, "sweep", {name: tuple(values) for name, values in self.sweep.items()})
        for name in ("seeds", "init_seeds"):
            for seed in getattr(self, name):
                _check_int(name, seed, 0)
        if self.init_seeds and len(self.init_seeds) != len(self.seeds):
            raise ValueError(f"init_seeds: expected one per seed of --seeds ({len(self.seeds)}), got {len(self.init_seeds)}")
        if self.seeds and self.seed != SEED:
            raise ValueError("seed: --seeds gives the runs' sampling seeds; leave out --seed")
        if self.init_seeds and self.init_seed != INIT_SEED:
            raise ValueError("init_seed: --init_seeds gives the runs' initialisation seeds; leave out --init_seed")
        for name, values in self.sweep.items():
            if name not in SWEEPABLE:
                raise ValueError(
                    f"sweep: {name} cannot differ between runs: it shapes the compiled program or the search, which "
                    f"the runs share; the settings that can: {', '.join(SWEEPABLE)}"
                )
            if not values or len(set(values)) != len(values):
                raise ValueError(f"sweep: {name} needs distinct values, got {list(values)}")
            for value in values:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"sweep: {name}: expected numbers, got {value!r}")
                try:
                    dataclasses.replace(self.rso, **{name: value})
                except ValueError as e:
                    raise ValueError(f"sweep: {e}") from None
        # Numbers as floats, as the command line gives them: 2 and 2.0 are one configuration.
        object.__setattr__(self, "sweep", {name: tuple(map(float, values)) for name, values in self.sweep.items()})
        if self.runs is None:
            return
        if self.optimizer == "sgd":
            flag = "seeds" if self.seeds else "sweep"
            raise ValueError(f"{flag}: the SGD baseline trains one run at a time; run it once per --seed")
        pairs = [(r["seed"], r["init_seed"]) for r in self.runs[: len(self.seeds) or 1]]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"seeds: two runs would have the same seed and init seed (seeds {list(self.seeds)})")

    @property
    def runs(self) -> list[dict] | None:
        """The labels of the runs advanced together (`rsojax.train.run_labels`): every value of
        `sweep` with every seed of `seeds` (default: `seed`), each with its init seed (default:
        `init_seed`); None for the single run of `seed` and `init_seed`."""
        if not self.seeds and not self.sweep:
            return None
        seeds = self.seeds or (self.seed,)
        return run_labels(seeds, self.init_seeds or (self.init_seed,) * len(seeds), self.sweep)

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


def load_data(config: ExperimentConfig) -> Dataset:
    """The task's data as a config says: from `config.data` (.npz), else from TFDS.

    Args:
      config: the experiment's config (its task, data, data_dir, download, train_subset).

    Returns:
      The dataset, preprocessed as the reference code does.

    Raises:
      FileNotFoundError: the data is missing.
      ValueError: the .npz file is malformed or `train_subset` too large.
    """
    task = TASKS[config.task]
    if config.data is not None:
        return load_npz(config.data, config.train_subset, SOURCES[task.source].per_channel_mean)
    return load(task.source, config.data_dir, config.train_subset, config.download)


def build_model(config: ExperimentConfig):
    """The task's network as a config says.

    Args:
      config: the experiment's config (its task, channels, global pool and convolution backend).

    Returns:
      The network.

    Raises:
      ValueError: `conv` "pallas" off a GPU, where the kernel would run in Pallas's interpret
        mode (the same values, orders of magnitude slower: for tests, not for runs).
    """
    if resolve_conv(config.conv) == "pallas" and jax.default_backend() != "gpu":
        raise ValueError(f"conv: the Pallas kernel runs on GPUs only, and this backend is {jax.default_backend()}; use xla or auto")
    return TASKS[config.task].model(channels=config.channels, global_pool=config.global_pool, conv=config.conv)
