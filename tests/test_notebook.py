"""The quickstart notebook runs top to bottom (on a small subset of real MNIST)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_executes(monkeypatch):
    if not os.environ.get("TFDS_DATA_DIR"):
        pytest.skip("TFDS_DATA_DIR is not set: the notebook needs MNIST (.ci/run sets it)")
    monkeypatch.setenv("QUICKSTART_TRAIN_SUBSET", "256")
    monkeypatch.setenv("QUICKSTART_RSO_BATCH", "16")
    monkeypatch.setenv("QUICKSTART_CHANNELS", "2")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "RSO: test accuracy" in outputs and "SGD: test accuracy" in outputs
    assert any("image/png" in o.get("data", {}) for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
