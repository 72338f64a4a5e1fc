"""The command lines end to end on mock MNIST."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))

import compare  # noqa: E402
import mnist  # noqa: E402


@pytest.mark.parametrize("optimizer", ["rso", "sgd"])
def test_mnist_writes_metrics_summary_and_curves(mock_mnist, tmp_path, optimizer):
    workdir = tmp_path / optimizer
    argv = ["--optimizer", optimizer, "--cycles", "2", "--batch_size", "16", "--train_subset", "64",
            "--channels", "2", "--workdir", str(workdir), "--data_dir", mock_mnist]
    summary = mnist.main(argv)
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    expected = 2 * 19 if optimizer == "rso" else 2
    assert len(records) == expected
    keys = {"cycle", "layer", "n_weights", "accepted", "batch_loss_before", "batch_loss_after"} if optimizer == "rso" else {"epoch"}
    for record in records:
        assert keys | {"test_accuracy", "weight_updates", "wall_time_s"} <= record.keys()
    on_disk = json.loads(open(workdir / "summary.json").read())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("optimizer", "config", "test_accuracy", "best_test_accuracy", "weight_updates", "wall_time_s",
                "params_sha256", "jax_version", "device", "n_devices", "n_processes"):
        assert key in on_disk
    assert on_disk["config"]["batch_size"] == 16 and on_disk["optimizer"] == optimizer
    assert on_disk["weight_updates"] == records[-1]["weight_updates"]
    assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_parameters(mock_mnist, tmp_path):
    def run(name, seed):
        argv = ["--cycles", "1", "--batch_size", "16", "--train_subset", "48", "--channels", "2", "--kernels_only",
                "--seed", str(seed), "--workdir", str(tmp_path / name), "--data_dir", mock_mnist]
        return mnist.main(argv)["params_sha256"]

    assert run("a", 1) == run("b", 1) != run("c", 2)


def test_compare_writes_table_and_plot(mock_mnist, tmp_path):
    compare.main(["--cycles", "1", "--train_subset", "48", "--rso_batch_size", "16", "--sgd_batch_size", "16",
                  "--channels", "2", "--workdir", str(tmp_path), "--data_dir", mock_mnist, "--kernels_only"])
    table = (tmp_path / "compare.md").read_text()
    assert "| RSO | 1 | 16 |" in table and "| SGD | 1 | 16 |" in table
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
