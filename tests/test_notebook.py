"""The quickstart notebook runs top to bottom as a user runs it: the kernel in notebooks/, the
README's relative TFDS_DATA_DIR (on a small subset of real MNIST)."""

import os

import pytest
from conftest import ROOT, execute_notebook


def mnist_dir() -> str:
    """The TFDS data directory the quickstart reads, relative to the repository as the README sets it.

    A directory someone named (`TFDS_DATA_DIR`, which .ci/run always sets) or a CI run (`CI`)
    must hold MNIST: its absence fails the test instead of skipping it unnoticed. Only the
    default `../shared` of a clone elsewhere may be absent: an explicit skip, listed by `-ra`.
    """
    data_dir = os.environ.get("TFDS_DATA_DIR", os.path.join("..", "shared", "tensorflow_datasets"))
    path = os.path.join(ROOT, data_dir)
    if not os.path.isdir(os.path.join(path, "mnist")):
        message = f"no TFDS MNIST in {path}: set TFDS_DATA_DIR (relative to the repository) to a folder holding mnist/"
        if "TFDS_DATA_DIR" in os.environ or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return data_dir


def test_quickstart_notebook_executes(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", mnist_dir())  # as the README sets it, resolved by the notebook
    monkeypatch.setenv("QUICKSTART_TRAIN_SUBSET", "256")
    monkeypatch.setenv("QUICKSTART_RSO_BATCH", "16")
    monkeypatch.setenv("QUICKSTART_CHANNELS", "2")
    outputs = execute_notebook("quickstart.ipynb")
    assert "RSO: test accuracy" in outputs and "SGD: test accuracy" in outputs
