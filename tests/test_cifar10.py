"""The CIFAR-10 network, its preprocessing and experiments/cifar10.py end to end on mock data."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import random_data, script

import rsojax
from rsojax import experiment
from rsojax.data import preprocess
from rsojax.layer_order import get_leaf, leaf_paths
from rsojax.models import BatchNorm, cifar10_resnet
from rsojax.records import read_records


def test_network_has_the_papers_size_and_a_complete_search_order():
    model = cifar10_resnet()
    params = rsojax.init_params(model)
    assert sum(a.size for a in jax.tree.leaves(params)) == 57_104
    order = model.search_order()
    assert sorted(order) == sorted(leaf_paths(params)) and len(set(order)) == len(order) == 31
    assert order[:4] == ["dense/kernel", "conv_9/kernel", "bn_9/bias", "bn_9/scale"]
    at = order.index("conv_5/kernel")
    assert order[at: at + 6] == ["conv_5/kernel", "bn_5/bias", "bn_5/scale", "shortcut_5/kernel",
                                 "shortcut_bn_5/bias", "shortcut_bn_5/scale"]
    assert order[-3:] == ["conv_1/kernel", "bn_1/bias", "bn_1/scale"]
    assert model.search_order(kernels_only=True) == ["dense/kernel"] + [
        k for i in range(9, 0, -1) for k in [f"conv_{i}/kernel"] + (["shortcut_5/kernel"] if i == 5 else [])
    ]


def test_residual_additions_pools_and_shortcut_written_out():
    model = cifar10_resnet(channels=2)
    x, _ = random_data(4, model.input_shape)
    params = rsojax.init_params(model)
    logits, state = model.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])
    out = {k: v["__call__"][0] for k, v in state["intermediates"].items() if k != "__call__"}

    def bn(name, h):
        return BatchNorm().apply({"params": params[name]}, h, train=True)

    def pool(h):
        return nn.avg_pool(h, (2, 2), strides=(2, 2))

    expected = {
        "bn_2": bn("bn_2", out["conv_2"]),
        "bn_3": bn("bn_3", pool(out["conv_3"] + out["bn_1"])),
        "bn_4": bn("bn_4", out["conv_4"]),
        "bn_5": bn("bn_5", pool(out["conv_5"] + bn("shortcut_bn_5", out["shortcut_5"]))),
        "bn_7": bn("bn_7", out["conv_7"] + out["bn_5"]),
        "bn_9": bn("bn_9", out["conv_9"] + out["bn_7"]),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(out[name], value, rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(out["shortcut_5"], out["bn_3"] @ params["shortcut_5"]["kernel"][0, 0], atol=1e-12)
    assert out["bn_3"].shape == (4, 16, 16, 2) and out["bn_5"].shape == (4, 8, 8, 4) and out["bn_9"].shape == (4, 8, 8, 4)
    np.testing.assert_allclose(logits, out["bn_9"].mean(axis=(1, 2)) @ params["dense"]["kernel"], atol=1e-12)


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
    assert (summary["task"], summary["config"]["evaluator"], summary["config"]["global_pool"]) == ("cifar10", "generic", "max")
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
    assert (config.rso.cycles, config.rso.batch_size, config.evaluator, config.channels) == (500, 5000, "generic", 16)
    with pytest.raises(SystemExit):
        experiment.parse_flags(["--workdir", str(tmp_path), "--evaluator", "cached"], "cifar10")
