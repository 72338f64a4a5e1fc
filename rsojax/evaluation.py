"""Test accuracy as the RSO reference code measures it.

BN statistics are taken from the first `stats_images` (2000) training images in batch mode,
then the test set runs with those statistics (`train=False`), `eval_batch` images per pass, at
the precision `precision` (`rsojax.precision`: full float32 by default on every backend).
"""

import functools

import jax
import jax.numpy as jnp

from rsojax.models import Sequential
from rsojax.precision import precision_scope


def bn_statistics(model: Sequential, params, x_stats) -> dict:
    """Every BN layer's mean and variance over `x_stats`, as evaluation uses them.

    Args:
      model: the network.
      params: its parameters.
      x_stats: the images the statistics are taken over (batch mode).

    Returns:
      The `batch_stats` collection (empty for a network without BN).
    """
    _, variables = model.apply({"params": params}, x_stats, train=True, mutable=["batch_stats"])
    return variables.get("batch_stats", {})


def predict(model: Sequential, params, batch_stats, x) -> jax.Array:
    """Predicted classes of `x` in evaluation mode.

    Args:
      model: the network.
      params: its parameters.
      batch_stats: the BN statistics to normalise with (`bn_statistics`).
      x: the images, (N, *model.input_shape).

    Returns:
      int[N], the class of the largest logit of each image.
    """
    return jnp.argmax(model.apply({"params": params, "batch_stats": batch_stats}, x, train=False), axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "stats_images", "eval_batch"))
def _correct(model, params, x_train, x_test, y_test, stats_images, eval_batch):
    batch_stats = bn_statistics(model, params, x_train[:stats_images])
    n_full = x_test.shape[0] // eval_batch * eval_batch
    passes = x_test[:n_full].reshape(-1, eval_batch, *x_test.shape[1:])
    preds = jax.lax.map(lambda x: predict(model, params, batch_stats, x), passes).reshape(-1)
    correct = jnp.sum(preds == y_test[:n_full])
    if n_full < x_test.shape[0]:
        correct += jnp.sum(predict(model, params, batch_stats, x_test[n_full:]) == y_test[n_full:])
    return correct


def _at_precision(fn, model, params, x_train, x_test, y_test, stats_images, eval_batch, precision):
    """`fn` (`_correct` or `_correct.lower`) on validated arguments, traced at `precision`."""
    if x_test.shape[0] != y_test.shape[0]:
        raise ValueError(f"x_test, y_test: {x_test.shape[0]} images but {y_test.shape[0]} labels")
    with precision_scope(precision):
        return fn(model, params, x_train, x_test, y_test, stats_images, min(eval_batch, x_test.shape[0]))


def accuracy(
    model: Sequential, params, x_train, x_test, y_test, stats_images=2000, eval_batch=2000, precision="float32"
) -> float:
    """Test accuracy as the reference code measures it.

    Args:
      model: the network.
      params: its parameters.
      x_train: the training images; BN statistics come from the first `stats_images`.
      x_test: the test images.
      y_test: their integer labels.
      stats_images: how many training images the BN statistics are taken over.
      eval_batch: test images per forward pass (memory only).
      precision: of convolutions and matrix products, a name of `rsojax.precision.PRECISIONS`.

    Returns:
      The fraction of test images classified correctly.

    Raises:
      ValueError: `x_test` and `y_test` differ in length, or `precision` is unknown.
    """
    correct = _at_precision(_correct, model, params, x_train, x_test, y_test, stats_images, eval_batch, precision)
    return float(correct) / x_test.shape[0]


def lower_accuracy(
    model: Sequential, params, x_train, x_test, y_test, stats_images=2000, eval_batch=2000, precision="float32"
) -> jax.stages.Lowered:
    """The compiled part of `accuracy` with the same arguments, lowered as it runs (to inspect its HLO)."""
    return _at_precision(_correct.lower, model, params, x_train, x_test, y_test, stats_images, eval_batch, precision)
