import os

import numpy as np
import pytest
from conftest import ROOT, mnist_dir

from rsojax.data import load_mnist, load_npz, preprocess


def test_load_mnist_through_tfds(mock_mnist):
    data = load_mnist(mock_mnist)
    assert data.x_train.shape == (96, 28, 28, 1) and data.x_test.shape == (96, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert abs(float(data.x_train.mean())) < 1e-3  # training mean subtracted (in float16)
    assert float(data.x_train.max() - data.x_train.min()) <= 1.0
    assert load_mnist(mock_mnist, train_subset=10).x_train.shape[0] == 10


def test_train_subset_reads_the_first_images_of_real_mnist():
    """TFDS reads only the images kept, the first of the split as a whole read gives them
    (their labels, from TFDS MNIST 3.0.1's training split read whole); a subset larger than
    the split is refused as such, not as missing data."""
    data_dir = os.path.join(ROOT, mnist_dir())
    data = load_mnist(data_dir, train_subset=12)
    assert data.y_train.tolist() == [4, 1, 0, 7, 8, 1, 2, 7, 1, 6, 6, 4] and data.x_test.shape == (10_000, 28, 28, 1)
    with pytest.raises(ValueError, match="train_subset: 60001 is larger than the training split"):
        load_mnist(data_dir, train_subset=60_001)


def test_data_dir_from_environment(mock_mnist, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", mock_mnist)
    assert load_mnist().y_test.shape == (96,)


def test_missing_data_fails_at_once_naming_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_mnist(str(tmp_path / "empty"))
    message = str(e.value)
    assert message.startswith("data_dir: MNIST (TFDS mnist/3.0.1) was not found in ")
    for fix in ("--data_dir", "TFDS_DATA_DIR", "--download", "--data FILE.npz"):
        assert fix in message
    assert not message.endswith(")") and "AssertionError" not in message


def test_mnist_is_rounded_through_float16_as_the_reference():
    """Literal float16 arithmetic, one pixel at a time: x16 = float16(u / 255), m =
    float16(mean of the x16 in float64), x16 - m in float16."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 6, 1), dtype=np.uint8)
    xt = rng.integers(0, 256, (5, 6, 6, 1), dtype=np.uint8)
    y, yt = rng.integers(0, 10, 20), rng.integers(0, 10, 5)
    data = preprocess(x, y, xt, yt, train_subset=12)
    x16 = [np.float16(np.float32(u) / np.float32(255)) for u in x[:12].ravel()]
    mean16 = np.float16(sum(float(v) for v in x16) / len(x16))
    for images, got in ((x[:12], data.x_train), (xt, data.x_test)):
        expected = [np.float32(np.float16(np.float16(np.float32(u) / np.float32(255)) - mean16)) for u in images.ravel()]
        np.testing.assert_array_equal(np.asarray(got).ravel(), expected)
        assert got.dtype == np.float32
    # float32 arithmetic would give other values: the rounding is visible.
    assert np.any(np.asarray(data.x_train) != (x[:12] / np.float32(255) - (x[:12] / np.float32(255)).mean()))
    np.testing.assert_array_equal(data.y_train, y[:12])


def test_load_npz_takes_keras_layouts_and_preprocesses_as_tfds(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    y, yt = rng.integers(0, 10, 30), rng.integers(0, 10, 10)
    np.savez(tmp_path / "nhw.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    np.savez(tmp_path / "float.npz", x_train=(x / 255.0)[..., None], y_train=y[:, None], x_test=(xt / 255.0)[..., None],
             y_test=yt[:, None])  # NHWC float images, labels N x 1 (Keras' CIFAR-10 layout)
    reference = preprocess(x[..., None], y, xt[..., None], yt, train_subset=20)
    for name in ("nhw.npz", "float.npz"):
        data = load_npz(str(tmp_path / name), train_subset=20)
        assert data.x_train.shape == (20, 28, 28, 1) and data.y_test.dtype == np.int32
        for got, want in zip(data, reference, strict=True):
            np.testing.assert_array_equal(got, want)
    rgb = rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x_train=rgb, y_train=y[:8], x_test=rgb, y_test=y[:8])
    per_channel = load_npz(str(tmp_path / "rgb.npz"), per_channel_mean=True)
    np.testing.assert_allclose(np.asarray(per_channel.x_train).mean(axis=(0, 1, 2)), 0, atol=1e-6)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_test": None}, r"data: .*bad.npz has no x_test \(has x_train, y_train, y_test\); expected x_train, y_train"),
        ({"x_train": np.zeros((4, 28), np.uint8)}, r"data: x_train must hold images N x H x W or N x H x W x C, got shape \(4, 28\)"),
        ({"x_test": np.zeros((4, 28, 28), np.int64)}, "data: x_test must be uint8 .* or float .* images, got int64"),
        ({"y_train": np.zeros(4, np.float32)}, "data: y_train must be a vector of integer labels, got float32"),
        ({"y_test": np.zeros(3, np.int64)}, "data: x_test has 4 images but y_test has 3 labels"),
        ({"x_test": np.zeros((4, 14, 14), np.uint8)}, r"data: x_train \(28, 28, 1\) and x_test \(14, 14, 1\) must be images of one shape"),
        ({"y_train": np.array([0, 1, 2, 10])}, "data: y_train has labels outside 0..9"),
    ],
)
def test_load_npz_names_the_bad_key(tmp_path, arrays, message):
    good = {"x_train": np.zeros((4, 28, 28), np.uint8), "y_train": np.arange(4), "x_test": np.zeros((4, 28, 28), np.uint8),
            "y_test": np.arange(4)}
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in (good | arrays).items() if v is not None})
    with pytest.raises(ValueError, match=message):
        load_npz(str(tmp_path / "bad.npz"))


def test_load_npz_refuses_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data: .*none.npz is not a file"):
        load_npz(str(tmp_path / "none.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="data: .*text.npz is not a readable .npz file"):
        load_npz(str(tmp_path / "text.npz"))


def test_preprocess_rejects_bad_data():
    x = np.zeros((4, 28, 28, 1), np.float32)
    y = np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match="train_subset: 5 is larger than the training split"):
        preprocess(x, y, x, y, train_subset=5)
    with pytest.raises(ValueError, match="train_subset: expected a non-negative integer"):
        preprocess(x, y, x, y, train_subset=-1)
    bad = x.copy()
    bad[1, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="data: x_train contains NaN or inf"):
        preprocess(bad, y, x, y)
    with pytest.raises(ValueError, match="data: y_test has labels outside 0..9"):
        preprocess(x, y, x, np.array([0, 1, 2, 10]))
