"""experiments/ablations.py and experiments/peer.py end to end on mock MNIST."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))

import ablations  # noqa: E402


def test_ablations_write_a_row_per_variant_and_a_plot(mock_mnist, tmp_path):
    results = ablations.main(["--variants", "normal,neuron_parallel", "--cycles", "1", "--train_subset", "48",
                              "--batch_size", "16", "--channels", "2", "--kernels_only", "--workdir", str(tmp_path),
                              "--data_dir", mock_mnist])
    assert list(results) == ["normal", "neuron_parallel"]
    visits = 2 * 9 + 5 * 36 + 2 * 10  # the kernels of the 2-channel network, each weight visited once
    table = (tmp_path / "ablations.md").read_text().splitlines()
    assert table[2] == "| variant | test acc. (%) | best (%) | weight updates | train time (s) |"
    assert [row.split(" | ")[0] for row in table[4:]] == ["| normal", "| neuron_parallel"]
    assert all(f"| {visits:,} |" in row for row in table[4:])
    assert results["neuron_parallel"][0]["config"]["granularity"] == "neuron"
    assert (tmp_path / "ablations.png").read_bytes()[:4] == b"\x89PNG"


def test_peer_gives_each_method_the_same_images(mock_mnist, tmp_path):
    pytest.importorskip("evosax")
    import peer

    runs = peer.main(["--cycles", "1", "--train_subset", "48", "--rso_batch_size", "16", "--channels", "2",
                      "--strategies", "open_es", "--population", "4", "--es_batch_size", "16", "--workdir", str(tmp_path),
                      "--data_dir", mock_mnist])
    budget = runs["RSO"][-1]["images_forwarded"]
    assert budget == 3 * 16 * runs["RSO"][-1]["weight_updates"]
    assert budget - 4 * 16 < runs["open_es"][-1]["images_forwarded"] <= budget
    table = (tmp_path / "peer.md").read_text()
    assert f"every method forwards at most {budget:,} images" in table and "| open_es | pop. 4, batch 16," in table
    assert (tmp_path / "peer.png").read_bytes()[:4] == b"\x89PNG"
