"""CIFAR-10's preprocessing and experiments/cifar10.py end to end on mock data (the network:
test_resnet.py)."""

import jax
import numpy as np
from conftest import script

import rsojax
from rsojax import experiment
from rsojax.data import preprocess
from rsojax.layer_order import get_leaf
from rsojax.models import cifar10_resnet
from rsojax.records import read_records


def test_per_channel_mean_is_subtracted():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    x[..., 0] //= 4  # channels with different means
    y = rng.integers(0, 10, 20)
    data = preprocess(x, y, x[:5], y[:5], per_channel_mean=True)
    np.testing.assert_allclose(np.asarray(data.x_train).mean(axis=(0, 1, 2)), 0, atol=1e-6)
    mean = (x / 255.0).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(data.x_test, x[:5] / 255.0 - mean, atol=1e-6)
    assert abs(mean[0] - mean[1]) > 0.2


def test_cifar10_script_end_to_end_through_tfds(mock_cifar10, tmp_path):
    argv = ["--cycles", "1", "--batch_size", "16", "--train_subset", "48", "--channels", "2", "--kernels_only",
            "--workdir", str(tmp_path / "rso"), "--data_dir", mock_cifar10]
    summary = script("cifar10").main(argv)
    records = read_records(str(tmp_path / "rso"))
    model = cifar10_resnet(channels=2)
    params = rsojax.init_params(model)
    order = model.search_order(kernels_only=True)
    assert [r["layer"] for r in records] == order
    assert records[-1]["weight_updates"] == summary["weight_updates"] == sum(get_leaf(params, p).size for p in order)
    assert (summary["task"], summary["config"]["evaluator"], summary["config"]["global_pool"]) == ("cifar10", "incremental", "max")
    assert summary["test_accuracy"] == records[-1]["test_accuracy"] and 96 * summary["test_accuracy"] % 1 == 0
    assert (tmp_path / "rso" / "curves.png").read_bytes()[:4] == b"\x89PNG"

    sgd = script("cifar10").main(["--optimizer", "sgd", "--cycles", "1", "--batch_size", "16", "--channels", "2",
                                  "--workdir", str(tmp_path / "sgd"), "--data_dir", mock_cifar10])
    n_params = sum(a.size for a in jax.tree.leaves(params))
    assert sgd["weight_updates"] == n_params * (96 // 16) and sgd["config"]["sgd"]["batch_size"] == 16


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path / "w"), "--data_dir", str(tmp_path / "none")]
    assert experiment.cli(lambda: script("cifar10").main(argv), "cifar10.py") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("cifar10.py: error: --data_dir: CIFAR-10 (TFDS cifar10/3.0.2) was not found in ")
    assert "TFDS_DATA_DIR" in err and "add --download" in err and "--data FILE.npz" in err and "Error)" not in err
    assert not (tmp_path / "w").exists()


def test_defaults_are_the_papers(tmp_path):
    config, _ = experiment.parse_flags(["--workdir", str(tmp_path)], "cifar10")
    assert (config.rso.cycles, config.rso.batch_size, config.evaluator, config.channels) == (500, 5000, "incremental", 16)
    assert config.sgd.epochs == 500 and config.is_paper_protocol()
