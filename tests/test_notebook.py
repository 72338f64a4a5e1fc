"""The quickstart notebook runs top to bottom as a user runs it: the kernel in notebooks/, the
README's relative TFDS_DATA_DIR (on a small subset of real MNIST)."""

from conftest import execute_notebook, mnist_dir


def test_quickstart_notebook_executes(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", mnist_dir())  # as the README sets it, resolved by the notebook
    monkeypatch.setenv("QUICKSTART_TRAIN_SUBSET", "256")
    monkeypatch.setenv("QUICKSTART_TEST_SUBSET", "1000")  # the accuracy after each of 19 layers
    monkeypatch.setenv("QUICKSTART_RSO_BATCH", "16")
    monkeypatch.setenv("QUICKSTART_CHANNELS", "2")
    outputs = execute_notebook("quickstart.ipynb")
    assert "(256, 28, 28, 1) (1000, 28, 28, 1)" in outputs  # the subsets reached the notebook
    assert "RSO: test accuracy" in outputs and "SGD: test accuracy" in outputs
