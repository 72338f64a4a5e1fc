"""Shared fixtures. The suite runs in float64 (the references are float64); float32 tests
cast explicitly."""

import jax

jax.config.update("jax_enable_x64", True)

import contextlib  # noqa: E402
import os  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

import rsojax  # noqa: E402


def random_data(n, example_shape, key=0, dtype=jnp.float64):
    kx, ky = jax.random.split(jax.random.key(key))
    x = jax.random.normal(kx, (n, *example_shape), dtype)
    y = jax.random.randint(ky, (n,), 0, 10)
    return x, y


def init_params(model, x, seed=420, dtype=jnp.float64):
    params = model.init(jax.random.key(seed), x[:2], train=True)["params"]
    return jax.tree.map(lambda a: a.astype(dtype), params)


@pytest.fixture
def small_convnet():
    """The paper's MNIST network with 3 channels instead of 16: same structure, small."""
    model = rsojax.mnist_convnet(channels=3)
    x, y = random_data(48, model.input_shape)
    return model, init_params(model, x), (x, y)


@pytest.fixture
def small_mlp():
    model = rsojax.mlp(hidden=(6,), input_shape=(5,))
    x, y = random_data(40, model.input_shape)
    return model, init_params(model, x), (x, y)


@contextlib.contextmanager
def mock_tfds(data_dir, name, n=96):
    """TFDS `name` replaced by `tfds.testing.mock_data` (random images, the real metadata).

    With `batch_size=-1` the mock reads the split sizes from the data directory, so this
    writes the dataset's dataset_info.json and features.json (from TFDS's own builder) there.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(
        tfds.core.SplitDict([tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s in ("train", "test")])
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir):
        yield


@pytest.fixture
def mock_mnist(tmp_path):
    """Mock MNIST (`mock_tfds`), 96 images per split; yields the data directory."""
    with mock_tfds(str(tmp_path), "mnist"):
        yield str(tmp_path)


@pytest.fixture
def mock_cifar10(tmp_path):
    """Mock CIFAR-10 (`mock_tfds`), 96 images per split; yields the data directory."""
    with mock_tfds(str(tmp_path), "cifar10"):
        yield str(tmp_path)
