"""A run's files: records (`metrics.jsonl`), JSON written atomically, and markdown result tables.

A record is one JSON object per line of `metrics.jsonl`: one per RSO layer sweep or SGD
epoch, with at least `test_accuracy`, `weight_updates` and `wall_time_s`
(`rsojax.train`). Tables are what `experiments/compare.py`, `ablations.py` and `peer.py`
print and write.
"""

import contextlib
import json
import os
from collections.abc import Iterable, Sequence

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


def load(workdir: str, as_frame: bool = False):
    """A run's records (`metrics.jsonl`), as written so far, for analysis in Python.

    Args:
      workdir: the run's workdir (or its `metrics.jsonl`); the run may still be writing it.
      as_frame: return a pandas DataFrame (one row per record, a column per key) instead of a list.

    Returns:
      The records in the order written, one per RSO layer sweep or SGD epoch: a list of dicts,
      or a `pandas.DataFrame` with `as_frame`.

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
    return pd.DataFrame.from_records(records) if as_frame else records


def result_cells(records: Sequence[dict], count: str = "weight_updates") -> list[str]:
    """A run's `RESULT_COLUMNS`: final and best test accuracy (%), the last record's `count`
    (the name of the counted column may differ: see `markdown_table`), training time (s)."""
    last = records[-1]
    best = max(r["test_accuracy"] for r in records)
    return [f"{100 * last['test_accuracy']:.2f}", f"{100 * best:.2f}", f"{last[count]:,}", f"{last['wall_time_s']:.0f}"]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], caption: str = "") -> str:
    """A markdown table, under `caption` and a blank line if one is given."""
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(map(str, row))} |" for row in rows]
    return "\n".join([caption, "", *lines] if caption else lines)
