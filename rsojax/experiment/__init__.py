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
- `metrics.jsonl`: a record per RSO layer sweep or SGD epoch (`rsojax.train`); with
  `tensorboard`, the same records as TensorBoard event files (`rsojax.tensorboard`);
- `checkpoints/`: orbax, at every record and every `checkpoint_every_s` seconds;
- `summary.json` and `curves.png` when the run ends;
- `lock` while it runs: one run writes a workdir at a time (`workdir.WorkdirLock`).

With `seeds`, `init_seeds` or `sweep` (`ExperimentConfig.runs`), the workdir holds several RSO
runs advanced together in one program: a record per run per layer sweep, each with its run's
labels; the summary gives each run and the spread across them; one checkpoint holds them all.

Rerunning it with the same workdir resumes from the newest checkpoint that restores and ends
exactly as an uninterrupted run would. SIGTERM, SIGUSR1 and Ctrl-C stop a run at the next
chunk boundary after a checkpoint (`Preempted`); a write that fails stops it with a
`WriteError` naming the file (`cli` gives each its exit status). With several processes
(`distributed`), every process computes the same run, stops at the same chunk, and only
process 0 writes.
"""

from rsojax.experiment.config import (
    FIRST_RUN,
    OPTIMIZERS,
    RESUMABLE,
    TASKS,
    ExperimentConfig,
    SGDConfig,
    Task,
    UsageError,
    build_model,
    load_data,
)
from rsojax.experiment.flags import cli, flag_targets, parse_flags, parser
from rsojax.experiment.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, Preempted
from rsojax.experiment.run import train_and_evaluate
from rsojax.experiment.workdir import WorkdirLock, WriteError, writing

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_PREEMPTED",
    "FIRST_RUN",
    "OPTIMIZERS",
    "RESUMABLE",
    "TASKS",
    "ExperimentConfig",
    "Preempted",
    "SGDConfig",
    "Task",
    "UsageError",
    "WorkdirLock",
    "WriteError",
    "build_model",
    "cli",
    "flag_targets",
    "load_data",
    "parse_flags",
    "parser",
    "train_and_evaluate",
    "writing",
]
