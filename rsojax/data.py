"""MNIST and CIFAR-10, from TFDS or from arrays, preprocessed as the RSO reference code does.

Two routes to the same `Dataset`: `load` reads a TFDS dataset (TensorFlow is imported only
there), `load_npz` reads a NumPy `.npz` file with `x_train, y_train, x_test, y_test` (the
layout of Keras' `mnist.npz`). Whole splits are kept as device arrays: RSO draws a fresh
minibatch for every weight on device.

Preprocessing (`preprocess`) is the reference code's: images scaled to [0, 1], minus the mean
of the training images, no division by the std. MNIST is rounded through float16 as the
reference does (train.py casts the scaled images to float16; the mean is taken and subtracted
in float16); CIFAR-10 subtracts a float32 mean per channel.
"""

import os
import zipfile
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 10
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class Dataset(NamedTuple):
    """A training and a test split, as the trainers take them (any arrays of these shapes).

    Attributes:
      x_train: float32[N, *example_shape], the training inputs.
      y_train: int32[N], their labels.
      x_test: float32[M, *example_shape], the test inputs.
      y_test: int32[M], their labels.
    """

    x_train: jnp.ndarray
    y_train: jnp.ndarray
    x_test: jnp.ndarray
    y_test: jnp.ndarray


class Source(NamedTuple):
    """A TFDS dataset and how the reference code preprocesses it."""

    name: str  # TFDS name
    version: str
    title: str
    per_channel_mean: bool  # a float32 mean per channel (CIFAR-10), else MNIST's float16 rule
    where: str  # where to get it, for the error message


SOURCES = {
    "mnist": Source("mnist", "3.0.1", "MNIST", False, "on this project's machines: ../shared/tensorflow_datasets"),
    "cifar10": Source("cifar10", "3.0.2", "CIFAR-10", True, "this project's machines have none; about 160 MB"),
}


def load_mnist(data_dir: str | None = None, train_subset: int = 0, download: bool = False) -> Dataset:
    """MNIST from TFDS, preprocessed as the reference code does (`load`).

    Args:
      data_dir: the TFDS data directory; default: `$TFDS_DATA_DIR`, else TFDS's default.
      train_subset: keep the first N training images (0: all).
      download: let TFDS download and prepare the data when it is missing (off: fail at once).

    Returns:
      The dataset: 60,000 training and 10,000 test images, (28, 28, 1) each.

    Raises:
      FileNotFoundError: the data is not in `data_dir` (and `download` is off or failed).
      ImportError: TensorFlow Datasets is not installed.
    """
    return load("mnist", data_dir, train_subset, download)


def load(name: str, data_dir: str | None = None, train_subset: int = 0, download: bool = False) -> Dataset:
    """A dataset of `SOURCES` from TFDS, preprocessed as the reference code does (`preprocess`).

    Args:
      name: "mnist" or "cifar10".
      data_dir: the TFDS data directory; default: `$TFDS_DATA_DIR`, else TFDS's default.
      train_subset: keep the first N training images (0: all).
      download: let TFDS download and prepare the data when it is missing (off: fail at once).

    Returns:
      The dataset, preprocessed.

    Raises:
      FileNotFoundError: the data is not in `data_dir` (and `download` is off or failed).
      ImportError: TensorFlow Datasets is not installed.
    """
    source = SOURCES[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            f"loading {source.title} from TFDS needs TensorFlow Datasets: pip install 'rsojax[data]', "
            f"or pass the arrays as --data FILE.npz ({e})"
        ) from None
    tf.config.set_visible_devices([], "GPU")  # TF only reads files; the accelerators are JAX's
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    _check_subset(train_subset)
    train = f"train[:{train_subset}]" if train_subset else "train"  # TFDS reads only the images kept
    try:
        splits = tfds.load(
            source.name, split=[train, "test"], batch_size=-1, as_supervised=True, data_dir=data_dir, download=download
        )
    except Exception as e:  # TFDS signals missing data with AssertionError or DatasetNotFoundError
        if train_subset and "incompatible with" in str(e):  # TFDS: "Requested slice [:N] incompatible with M examples."
            raise ValueError(f"train_subset: {train_subset} is larger than the training split ({e})") from None
        where = data_dir or "TFDS's default data directory"
        if download:
            raise FileNotFoundError(f"data_dir: {source.title} could not be downloaded into {where} ({e})") from None
        raise FileNotFoundError(
            f"data_dir: {source.title} (TFDS {source.name}/{source.version}) was not found in {where}. Point "
            f"--data_dir or the TFDS_DATA_DIR environment variable at a folder holding {source.name}/{source.version} "
            f"({source.where}), add --download to let TFDS fetch it, or pass the arrays as --data FILE.npz"
        ) from None
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(splits)
    return preprocess(x_train, y_train, x_test, y_test, train_subset, source.per_channel_mean)


def load_npz(path: str, train_subset: int = 0, per_channel_mean: bool = False) -> Dataset:
    """A dataset from a NumPy `.npz` file, preprocessed as `load`'s (`preprocess`).

    Args:
      path: a file with arrays `x_train`, `y_train`, `x_test`, `y_test` (Keras' `mnist.npz`
        layout): images N x H x W or N x H x W x C, uint8 (0..255) or float (already in
        [0, 1]); labels N or N x 1, integers 0..9.
      train_subset: keep the first N training images (0: all).
      per_channel_mean: the rule of `preprocess` (False: MNIST's; True: CIFAR-10's).

    Returns:
      The dataset, preprocessed.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: a key is missing or an array has the wrong shape or type (the message names it).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data: {path} is not a file")
    if not zipfile.is_zipfile(path):  # an .npz is a zip of .npy files
        raise ValueError(f"data: {path} is not a readable .npz file (np.savez writes one)")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(
                f"data: {path} has no {', '.join(missing)} (has {', '.join(f.files) or 'nothing'}); "
                f"expected {', '.join(NPZ_KEYS)}, as Keras' mnist.npz"
            )
        arrays = {k: f[k] for k in NPZ_KEYS}
    for k in ("x_train", "x_test"):
        x = arrays[k]
        if x.ndim == 3:  # N x H x W: one channel
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"data: {k} must hold images N x H x W or N x H x W x C, got shape {x.shape}")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"data: {k} must be uint8 (0..255) or float (0..1) images, got {x.dtype}")
        arrays[k] = x
    for k in ("y_train", "y_test"):
        y = arrays[k]
        if y.ndim == 2 and y.shape[1] == 1:  # Keras' CIFAR-10 layout
            y = y[:, 0]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"data: {k} must be a vector of integer labels, got {y.dtype} of shape {y.shape}")
        arrays[k] = y
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise ValueError(f"data: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(
            f"data: x_train {arrays['x_train'].shape[1:]} and x_test {arrays['x_test'].shape[1:]} must be images of one shape"
        )
    return preprocess(*(arrays[k] for k in NPZ_KEYS), train_subset, per_channel_mean)


def _check_subset(train_subset):
    """Raises ValueError unless `train_subset` is a non-negative integer (0: all images)."""
    if not isinstance(train_subset, int | np.integer) or isinstance(train_subset, bool) or train_subset < 0:
        raise ValueError(f"train_subset: expected a non-negative integer (0 = all), got {train_subset!r}")


def preprocess(x_train, y_train, x_test, y_test, train_subset: int = 0, per_channel_mean: bool = False) -> Dataset:
    """The reference code's preprocessing; keeps the first `train_subset` training images.

    Images are scaled to [0, 1] (uint8 divided by 255; float images are taken as scaled), and
    the mean of the kept training images is subtracted:
      - `per_channel_mean=False` (MNIST): x16 = float16(x); m = float16(mean(x16_train)), the
        mean taken in float64; x16 - m in float16; the result stored as float32.
      - `per_channel_mean=True` (CIFAR-10): the float32 mean of each channel, in float32.

    Raises:
      ValueError: a bad `train_subset`, non-finite images or labels outside 0..9 (the message
        names the argument or array).
    """
    n = len(x_train)
    _check_subset(train_subset)
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
    x_train, x_test = _scaled(x_train), _scaled(x_test)
    if per_channel_mean:
        mean = x_train.mean(axis=tuple(range(x_train.ndim - 1)))
        x_train, x_test = x_train - mean, x_test - mean
    else:
        x_train, x_test = x_train.astype(np.float16), x_test.astype(np.float16)
        mean = np.float16(x_train.mean(dtype=np.float64))
        x_train, x_test = (x_train - mean).astype(np.float32), (x_test - mean).astype(np.float32)
    return Dataset(
        x_train=jnp.asarray(x_train),
        y_train=jnp.asarray(y_train, jnp.int32),
        x_test=jnp.asarray(x_test),
        y_test=jnp.asarray(y_test, jnp.int32),
    )


def _scaled(x) -> np.ndarray:
    """float32 images in [0, 1]: uint8 divided by 255, floats as they are."""
    x = np.asarray(x)
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
