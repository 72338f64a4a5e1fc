import numpy as np
import pytest

from rsojax.data import load_mnist, preprocess


def test_load_mnist_through_tfds(mock_mnist):
    data = load_mnist(mock_mnist)
    assert data.x_train.shape == (96, 28, 28, 1) and data.x_test.shape == (96, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert abs(float(data.x_train.mean())) < 1e-5  # training mean subtracted
    assert float(data.x_train.max() - data.x_train.min()) <= 1.0
    assert load_mnist(mock_mnist, train_subset=10).x_train.shape[0] == 10


def test_data_dir_from_environment(mock_mnist, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", mock_mnist)
    assert load_mnist().y_test.shape == (96,)


def test_missing_data_fails_at_once_with_advice(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir: MNIST .* TFDS_DATA_DIR"):
        load_mnist(str(tmp_path / "empty"))


def test_preprocess_matches_reference_formula():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)
    xt = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    y, yt = rng.integers(0, 10, 20), rng.integers(0, 10, 5)
    data = preprocess(x, y, xt, yt, train_subset=12)
    mean = (x[:12] / 255.0).mean()
    np.testing.assert_allclose(data.x_train, x[:12] / 255.0 - mean, atol=1e-6)
    np.testing.assert_allclose(data.x_test, xt / 255.0 - mean, atol=1e-6)
    np.testing.assert_array_equal(data.y_train, y[:12])


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
