"""Command lines generated from `ExperimentConfig`: a flag per field, with its default and help.

A flag is named after its field (`--batch_size`) or its metadata's `flag`; a field with a True
default is switched off by its negation (its metadata's `flag`, else `--no_<field>`). A flag that sets a
field of both `rso` and `sgd` (`--batch_size`, `--cycles`) sets the chosen optimizer's. A field
whose metadata has `parse` takes text that `parse` reads (`--seeds 0-7`).
"""

import argparse
import dataclasses
import sys
import textwrap
import typing
from collections.abc import Callable

from rsojax import xla_flags
from rsojax.experiment.config import FIRST_RUN, TASKS, ExperimentConfig, UsageError
from rsojax.experiment.preemption import EXIT_INTERRUPTED, Preempted
from rsojax.experiment.workdir import WriteError


def flag_targets(config) -> dict[str, list[tuple[tuple[str, ...], dataclasses.Field, type]]]:
    """What each command-line flag sets, from the fields of a config and of its nested configs.

    Args:
      config: an `ExperimentConfig` (or any config dataclass built from `setting` fields).

    Returns:
      Flag name -> the (path, field, type) of each field it sets: a flag can set a field in
      each of `rso` and `sgd` (`--batch_size`).
    """
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
                flag = flag or f"no_{f.name}"
            flags.setdefault(flag or f.name, []).append(((*prefix, f.name), f, kind))

    visit(config, ())
    return flags


def _help(path, f, default) -> str:
    text = f.metadata.get("help", "")
    if isinstance(default, bool) and default:
        return f"sets {path[-1]} to False: {text}"
    return text if default is None or default is False or _empty(default) else f"{text} [default: {default}]"


def _empty(value) -> bool:
    """An empty tuple or dict: a setting that is off (`seeds`, `sweep`), shown without a default."""
    return isinstance(value, tuple | dict) and not value


def parser(task: str = "mnist", prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The command line of an experiment: `--workdir` and a flag per config field.

    Args:
      task: a key of `TASKS`, whose defaults (`ExperimentConfig.for_task`) the flags show.
      prog: the program's name in messages (default: argparse's).
      description: the text `--help` starts with.

    Returns:
      The parser.
    """
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
    for flag, targets in flag_targets(default).items():
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
        elif "parse" in f.metadata:  # text, read by `parse_flags`, which names the flag if it is bad
            kwargs["metavar"] = f.metadata["metavar"]
        else:
            kwargs |= {"type": kind, "choices": choices, "metavar": kind.__name__.upper() if kind in (int, float) else None}
        p.add_argument(f"--{flag}", **kwargs)
    return p


def parse_flags(argv=None, task: str = "mnist", prog: str | None = None, description: str | None = None):
    """The config and workdir that command-line flags ask for (`parser`).

    Flags left out keep the task's defaults; a flag shared by RSO and SGD (`--batch_size`,
    `--cycles`) sets the chosen optimizer's.

    Args:
      argv: the flags (default: `sys.argv[1:]`).
      task: a key of `TASKS`.
      prog: the program's name in messages.
      description: the text `--help` starts with.

    Returns:
      `(config, workdir)`.

    Raises:
      UsageError: a setting out of its range (naming the flag).
    """
    args = vars(parser(task, prog, description).parse_args(argv))
    workdir = args.pop("workdir")
    default = ExperimentConfig.for_task(task)
    flags = flag_targets(default)
    optimizer = args.get("optimizer", default.optimizer)
    changes = {}
    try:
        for flag, value in args.items():
            targets = flags[flag]
            path, f, _ = next(t for t in targets if len(targets) == 1 or t[0][0] == optimizer)
            changes[path] = f.metadata["parse"](value) if "parse" in f.metadata else value
        return _with(default, changes), workdir
    except ValueError as e:
        raise UsageError(flagged(str(e))) from None


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


def flagged(message: str) -> str:
    """A message that starts with a field's name ("batch_size: ..."), with the name of its flag
    ("--batch_size: ..."). Messages about the data itself ("data: x_train ...") keep theirs."""
    name, sep, rest = message.partition(":")
    if not sep or name == "data":
        return message
    names = {path[-1]: flag for flag, targets in flag_targets(ExperimentConfig()).items() for path, _, _ in targets}
    names |= {"n_devices": "devices", "workdir": "workdir"}
    return f"--{names[name]}:{rest}" if name in names else message


def cli(main: Callable[[], object], prog: str) -> int:
    """Runs `main()` for a command line, with `rsojax.xla_flags.RECOMMENDED` set; what stops a run
    becomes one line on stderr and an exit status:

    - 0: done;
    - 2: a `UsageError` (a bad setting, data or workdir; nothing was written);
    - 74: a `WriteError` (a file could not be written, a full disk for example; fix it and rerun);
    - 75: `Preempted` by SIGTERM or SIGUSR1 after a checkpoint (rerun to resume; a job script
      requeues on it);
    - 130: Ctrl-C (after a checkpoint, or at once on a second Ctrl-C; rerun to resume).

    Args:
      main: the command line's work, e.g. parsing the flags and calling `train_and_evaluate`.
      prog: the command's name, which starts every line it prints.

    Returns:
      The exit status above.
    """
    xla_flags.use_recommended()
    try:
        main()
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_status
    except Preempted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
