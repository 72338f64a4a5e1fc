"""experiments/ablations.py and experiments/peer.py end to end, on the tests' MNIST-like .npz."""

import pytest
from conftest import script

from rsojax.records import read_records


def test_ablations_write_a_row_per_variant_and_a_plot(mnist_npz, tmp_path):
    results = script("ablations").main(["--variants", "normal,neuron_parallel", "--cycles", "1", "--train_subset", "64",
                                        "--batch_size", "16", "--channels", "2", "--kernels_only", "--chunk_size", "8",
                                        "--workdir", str(tmp_path), "--data", mnist_npz])
    assert list(results) == ["normal", "neuron_parallel"]
    visits = 2 * 9 + 5 * 36 + 2 * 10  # the kernels of the 2-channel network, each weight visited once
    table = (tmp_path / "ablations.md").read_text().splitlines()
    assert table[2] == "| variant | test acc. (%) | best (%) | weight updates | train time (s) |"
    for row, (name, (summary, records)) in zip(table[4:], results.items(), strict=True):
        assert records == read_records(str(tmp_path / name)) and summary["weight_updates"] == visits
        assert row == (f"| {name} | {100 * summary['test_accuracy']:.2f} | {100 * summary['best_test_accuracy']:.2f} | "
                       f"{visits:,} | {summary['wall_time_s']:.0f} |")
    assert results["neuron_parallel"][0]["config"]["rso"]["granularity"] == "neuron"
    assert results["normal"][0]["params_sha256"] != results["neuron_parallel"][0]["params_sha256"]
    assert (tmp_path / "ablations.png").read_bytes()[:4] == b"\x89PNG"


def test_peer_gives_each_method_the_same_images(mnist_npz, tmp_path):
    pytest.importorskip("evosax")
    runs = script("peer").main(["--cycles", "1", "--train_subset", "64", "--rso_batch_size", "16", "--channels", "2",
                                "--strategies", "open_es", "--population", "4", "--es_batch_size", "16",
                                "--workdir", str(tmp_path), "--data", mnist_npz, "--kernels_only", "--chunk_size", "8"])
    budget = runs["RSO"][-1]["images_forwarded"]
    assert budget == 3 * 16 * runs["RSO"][-1]["weight_updates"]
    assert budget - 4 * 16 < runs["open_es"][-1]["images_forwarded"] <= budget
    assert read_records(str(tmp_path / "open_es.jsonl")) == runs["open_es"]
    table = (tmp_path / "peer.md").read_text()
    assert f"every method forwards at most {budget:,} images" in table and "| open_es | pop. 4, batch 16," in table
    assert (tmp_path / "peer.png").read_bytes()[:4] == b"\x89PNG"
