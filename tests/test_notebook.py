"""The quickstart notebook runs top to bottom as a user runs it: the kernel in notebooks/, the
README's relative TFDS_DATA_DIR (on a small subset of real MNIST)."""

import os

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(ROOT, "notebooks")


def test_quickstart_notebook_executes(monkeypatch):
    data_dir = os.environ.get("TFDS_DATA_DIR", os.path.join("..", "shared", "tensorflow_datasets"))
    if not os.path.isdir(os.path.join(ROOT, data_dir, "mnist")):
        pytest.skip(f"no TFDS MNIST in {os.path.join(ROOT, data_dir)}: set TFDS_DATA_DIR (relative to the repository)")
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)  # as the README sets it, resolved by the notebook
    monkeypatch.setenv("QUICKSTART_TRAIN_SUBSET", "256")
    monkeypatch.setenv("QUICKSTART_RSO_BATCH", "16")
    monkeypatch.setenv("QUICKSTART_CHANNELS", "2")
    nb = nbformat.read(os.path.join(NOTEBOOKS, "quickstart.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "RSO: test accuracy" in outputs and "SGD: test accuracy" in outputs
    assert any("image/png" in o.get("data", {}) for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
