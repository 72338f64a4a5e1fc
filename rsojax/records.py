"""A run's files: records (`metrics.jsonl`), JSON written atomically, and markdown result tables.

A record is one JSON object per line of `metrics.jsonl`: one per RSO layer sweep or SGD
epoch, with at least `test_accuracy`, `weight_updates` and `wall_time_s`
(`rsojax.train`). Several runs advanced together write one record per run per layer sweep,
each starting with its run's labels (`run`, `seed`, `init_seed`, swept values): `by_run` and
`load(run=k)` give them back per run, `summarize_runs` the spread across runs. Tables are what
`experiments/compare.py`, `ablations.py` and `peer.py` print and write.
"""

import contextlib
import json
import math
import os
from collections.abc import Iterable, Sequence

from rsojax.rso import SWEEPABLE

# The result columns of every table: `result_cells` fills them from a run's records.
RESULT_COLUMNS = ("test acc. (%)", "best (%)", "weight updates", "train time (s)")


def write_json(path: str, obj) -> None:
    """Writes `obj` as indented JSON, atomically: a reader never sees a half-written file."""
    with _atomic(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_records(path: str, records: Iterable[dict]) -> None:
    """Writes `records` one JSON object per line, atomically."""
    with _atomic(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def append_record(path: str, record: dict) -> None:
    """Appends `record` as one line (the file is open only while it is written)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@contextlib.contextmanager
def _atomic(path: str):
    """A file written to `path.tmp` and renamed onto `path` once complete; removed if the write fails
    (the space it took is given back)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            yield f
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def read_records(path: str) -> list[dict]:
    """The records of a JSON-lines file; `path` may be a run's workdir (its `metrics.jsonl`).

    A line counts once its newline is written: a last line without one is a record still being
    written by a running job, and is left out.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path) as f:
        lines = f.read().split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]


def load(workdir: str, as_frame: bool = False, run: int | None = None):
    """A run's records (`metrics.jsonl`), as written so far, for analysis in Python.

    Args:
      workdir: the run's workdir (or its `metrics.jsonl`); the run may still be writing it.
      as_frame: return a pandas DataFrame (one row per record, a column per key) instead of a list.
      run: of several runs in one workdir, run `run`'s records only (default: every run's,
        each with its `run` column).

    Returns:
      The records in the order written, one per RSO layer sweep or SGD epoch (and run): a list
      of dicts, or a `pandas.DataFrame` with `as_frame`.

    Raises:
      ImportError: `as_frame` without pandas installed.
      FileNotFoundError: `workdir` holds no `metrics.jsonl`.
    """
    if as_frame:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "as_frame: a DataFrame needs pandas (pip install pandas); as_frame=False gives a list of dicts"
            ) from None
    records = read_records(workdir)
    if run is not None:
        records = by_run(records).get(run, [])
    return pd.DataFrame.from_records(records) if as_frame else records


def by_run(records: Iterable[dict]) -> dict[int | None, list[dict]]:
    """Records grouped by run, each run's in the order written.

    Returns:
      Run index -> its records; the records of a single run (no `run` key) under None.
    """
    runs: dict = {}
    for record in records:
        runs.setdefault(record.get("run"), []).append(record)
    return runs


def swept(record: dict) -> dict:
    """The swept values a record carries (names of `rsojax.rso.SWEEPABLE`), in their order."""
    return {name: record[name] for name in SWEEPABLE if name in record}


def spread(values: Sequence[float]) -> dict:
    """`mean`, `std` (the sample standard deviation, n - 1; 0 for one value), `min`, `max` and `n`."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def summarize_runs(records: Iterable[dict]) -> dict:
    """Each run's result and their spread, from the records of several runs.

    Returns:
      `runs`: per run, its labels (`run`, `seed`, `init_seed`, swept values), final and best
      `test_accuracy`; `across_runs`: the `spread` of the final and of the best test accuracy
      over all runs; `by_sweep` (where the runs sweep a setting): per swept value, its runs'
      indices and the same spreads over them.
    """
    runs = []
    for rs in by_run(records).values():
        labels = {key: rs[-1][key] for key in ("run", "seed", "init_seed") if key in rs[-1]} | swept(rs[-1])
        runs.append(labels | {"test_accuracy": rs[-1]["test_accuracy"],
                              "best_test_accuracy": max(r["test_accuracy"] for r in rs)})

    def spreads(group):
        return {key: spread([r[key] for r in group]) for key in ("test_accuracy", "best_test_accuracy")}

    summary = {"runs": runs, "across_runs": spreads(runs)}
    groups: dict = {}
    for r in runs:
        groups.setdefault(tuple(swept(r).items()), []).append(r)
    if any(values for values in groups):
        summary["by_sweep"] = [dict(values) | {"runs": [r["run"] for r in group]} | spreads(group)
                               for values, group in groups.items()]
    return summary


def runs_by_sweep(records: Iterable[dict], name: str = "") -> dict[str, list[list[dict]]]:
    """Several runs' records grouped for `rsojax.plots.plot_runs`: label -> the runs (each its
    records) of one swept value; the label is `name` and the value ("RSO sigma_scale=0.5")."""
    groups: dict = {}
    for run in by_run(records).values():
        groups.setdefault(f"{name} {sweep_label(swept(run[0]))}".strip(), []).append(run)
    return groups


def sweep_label(values: dict) -> str:
    """"sigma_scale=0.5" for a run's swept values (`swept`); "" where nothing is swept."""
    return ", ".join(f"{name}={value:g}" for name, value in values.items())


def result_cells(records: Sequence[dict], count: str = "weight_updates") -> list[str]:
    """A run's `RESULT_COLUMNS`: final and best test accuracy (%), the last record's `count`
    (the name of the counted column may differ: see `markdown_table`), training time (s).
    Of several runs' records: the accuracies as mean ± standard deviation over the runs
    (`summarize_runs`), the count per run and the time of all runs together."""
    last = records[-1]
    if "run" in last:
        across = summarize_runs(records)["across_runs"]
        final, best = (across[k] for k in ("test_accuracy", "best_test_accuracy"))
        accuracies = [f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" for s in (final, best)]
    else:
        best = max(r["test_accuracy"] for r in records)
        accuracies = [f"{100 * last['test_accuracy']:.2f}", f"{100 * best:.2f}"]
    return [*accuracies, f"{last[count]:,}", f"{last['wall_time_s']:.0f}"]


def result_rows(name: str, records: Sequence[dict], count: str = "weight_updates") -> list[list[str]]:
    """Table rows of `result_cells` for a method's records: one row, or one per swept value of
    several runs (the name followed by the value: "RSO sigma_scale=0.5")."""
    groups: dict = {}
    for record in records:
        groups.setdefault(sweep_label(swept(record)), []).append(record)
    return [[f"{name} {label}".strip(), *result_cells(group, count)] for label, group in groups.items()]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], caption: str = "") -> str:
    """A markdown table, under `caption` and a blank line if one is given."""
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(map(str, row))} |" for row in rows]
    return "\n".join([caption, "", *lines] if caption else lines)
