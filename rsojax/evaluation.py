"""Test accuracy as the RSO reference code measures it.

BN statistics are taken from the first `stats_images` (2000) training images in batch mode,
then the test set runs with those statistics (`train=False`).
"""

import jax
import jax.numpy as jnp

from rsojax.models import Sequential


def bn_statistics(model: Sequential, params, x_stats) -> dict:
    """The `batch_stats` collection: every BN layer's mean and variance over `x_stats`."""
    _, variables = model.apply({"params": params}, x_stats, train=True, mutable=["batch_stats"])
    return variables.get("batch_stats", {})


def predict(model: Sequential, params, batch_stats, x, chunk_size: int = 2000) -> jax.Array:
    """Predicted classes of `x` in evaluation mode, computed in chunks."""
    variables = {"params": params, "batch_stats": batch_stats}
    preds = [
        jnp.argmax(model.apply(variables, x[i : i + chunk_size], train=False), axis=-1)
        for i in range(0, x.shape[0], chunk_size)
    ]
    return jnp.concatenate(preds)


def accuracy(model: Sequential, params, x_train, x_test, y_test, stats_images: int = 2000) -> float:
    """Test accuracy with BN statistics of the first `stats_images` training images."""
    if x_test.shape[0] != y_test.shape[0]:
        raise ValueError(f"x_test, y_test: {x_test.shape[0]} images but {y_test.shape[0]} labels")
    batch_stats = bn_statistics(model, params, x_train[:stats_images])
    return float(jnp.mean(predict(model, params, batch_stats, x_test) == y_test))
