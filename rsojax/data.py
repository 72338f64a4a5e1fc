"""MNIST and CIFAR-10 through TensorFlow Datasets, preprocessed as the RSO reference code does.

Whole splits are loaded at once (`batch_size=-1`) and kept as device arrays: RSO draws a
fresh minibatch for every weight on device. Images are scaled to [0, 1] and the mean of the
training images is subtracted (no division by the std), as in the reference code: over all
pixels for MNIST, per channel for CIFAR-10.
"""

import os
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 10


class Dataset(NamedTuple):
    x_train: jnp.ndarray  # float32[N, H, W, C]
    y_train: jnp.ndarray  # int32[N]
    x_test: jnp.ndarray
    y_test: jnp.ndarray


class Source(NamedTuple):
    """A TFDS dataset and how the reference code preprocesses it."""

    name: str  # TFDS name
    version: str
    title: str
    per_channel_mean: bool  # subtract the mean per channel (CIFAR-10) or over all pixels (MNIST)
    where: str  # where this project's machines keep it, for the error message


SOURCES = {
    "mnist": Source("mnist", "3.0.1", "MNIST", False, "on this project's machines: ../shared/tensorflow_datasets"),
    "cifar10": Source(
        "cifar10", "3.0.2", "CIFAR-10", True,
        "this project's machines have none: fetch it once where there is network with "
        "tfds.load('cifar10', data_dir=DIR), about 160 MB",
    ),
}


def load_mnist(data_dir: str | None = None, train_subset: int = 0, download: bool = False) -> Dataset:
    """MNIST from TFDS, scaled to [0, 1] minus the mean of the training pixels (`load`)."""
    return load("mnist", data_dir, train_subset, download)


def load_cifar10(data_dir: str | None = None, train_subset: int = 0, download: bool = False) -> Dataset:
    """CIFAR-10 from TFDS, scaled to [0, 1] minus the per-channel training mean (`load`)."""
    return load("cifar10", data_dir, train_subset, download)


def load(name: str, data_dir: str | None = None, train_subset: int = 0, download: bool = False) -> Dataset:
    """A dataset of `SOURCES` from TFDS, preprocessed.

    Args:
      name: "mnist" or "cifar10".
      data_dir: the TFDS data directory; default: `$TFDS_DATA_DIR`, else TFDS's default.
      train_subset: keep the first N training images (0: all).
      download: let TFDS download when the data is missing (off: fail at once).
    """
    source = SOURCES[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"loading {source.title} needs TensorFlow Datasets: pip install 'rsojax[data]' ({e})") from None
    tf.config.set_visible_devices([], "GPU")  # TF only reads files; the accelerators are JAX's
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        splits = tfds.load(
            source.name, split=["train", "test"], batch_size=-1, as_supervised=True, data_dir=data_dir, download=download
        )
    except Exception as e:  # TFDS signals missing data with AssertionError or DatasetNotFoundError
        where = data_dir or "TFDS's default data directory"
        raise FileNotFoundError(
            f"data_dir: {source.title} (TFDS {source.name}/{source.version}) was not found in {where}. Point "
            f"--data_dir or the TFDS_DATA_DIR environment variable at a folder holding {source.name}/{source.version} "
            f"({source.where}), or allow downloading. ({type(e).__name__})"
        ) from None
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(splits)
    return preprocess(x_train, y_train, x_test, y_test, train_subset, source.per_channel_mean)


def preprocess(x_train, y_train, x_test, y_test, train_subset: int = 0, per_channel_mean: bool = False) -> Dataset:
    """Scales uint8 images to [0, 1], subtracts the training mean (per channel if asked; over
    the kept images); keeps the first `train_subset`."""
    n = len(x_train)
    if not isinstance(train_subset, int | np.integer) or train_subset < 0:
        raise ValueError(f"train_subset: expected a non-negative integer (0 = all), got {train_subset!r}")
    if train_subset > n:
        raise ValueError(f"train_subset: {train_subset} is larger than the training split ({n} images)")
    if train_subset:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for name, a in arrays.items():
        if name.startswith("x") and not np.all(np.isfinite(np.asarray(a, np.float64))):
            raise ValueError(f"data: {name} contains NaN or inf")
        if name.startswith("y") and (np.min(a) < 0 or np.max(a) >= NUM_CLASSES):
            raise ValueError(f"data: {name} has labels outside 0..{NUM_CLASSES - 1}")
    x_train = np.asarray(x_train, np.float32) / 255.0
    x_test = np.asarray(x_test, np.float32) / 255.0
    mean = x_train.mean(axis=tuple(range(x_train.ndim - 1))) if per_channel_mean else x_train.mean()
    return Dataset(
        x_train=jnp.asarray(x_train - mean),
        y_train=jnp.asarray(y_train, jnp.int32),
        x_test=jnp.asarray(x_test - mean),
        y_test=jnp.asarray(y_test, jnp.int32),
    )
