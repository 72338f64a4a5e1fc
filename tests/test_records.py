"""rsojax.records.load: a run's records as a list or a DataFrame, read while the run writes them."""

import json
import sys

import pytest

import rsojax

RECORDS = [
    {"cycle": 0, "layer": "stages_6/Dense_0/kernel", "test_accuracy": 0.25, "weight_updates": 40, "wall_time_s": 1.5},
    {"cycle": 0, "layer": "stages_5/Conv_0/kernel", "test_accuracy": 0.5, "weight_updates": 76, "wall_time_s": 2.25},
]


@pytest.fixture
def workdir(tmp_path):
    """A workdir whose metrics.jsonl holds `RECORDS` and the start of a third record, cut
    where a running job's write has got to."""
    line = json.dumps(RECORDS[0] | {"weight_updates": 112})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + line[: len(line) // 2])
    return tmp_path


def test_load_gives_the_written_records_and_leaves_out_a_half_written_line(workdir):
    assert rsojax.records.load(str(workdir)) == RECORDS
    assert rsojax.records.load(str(workdir / "metrics.jsonl")) == RECORDS


def test_load_as_frame_has_a_row_per_record_and_a_column_per_key(workdir):
    frame = rsojax.records.load(str(workdir), as_frame=True)
    assert list(frame.columns) == list(RECORDS[0])
    assert frame.to_dict("records") == RECORDS


def test_load_as_frame_without_pandas_says_what_to_do(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ImportError, match=r"^as_frame: a DataFrame needs pandas \(pip install pandas\)"):
        rsojax.records.load(str(workdir), as_frame=True)
    assert rsojax.records.load(str(workdir)) == RECORDS
