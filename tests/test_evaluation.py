import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_data

import rsojax


def literal_predictions(model, params, x_train, x_test, stats_images, global_pool):
    """BN statistics of each layer from the first training images, then evaluation mode."""
    h_train, h_test = x_train[:stats_images], x_test
    for i, stage in enumerate(model.stages[:-1]):
        p = params[f"stages_{i}"]
        pre = []
        for h in (h_train, h_test):  # relu -> conv -> pool, as the stage does before its BN
            h = jax.nn.relu(h) if stage.relu_in else h
            h = jax.lax.conv_general_dilated(h, p["Conv_0"]["kernel"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            if stage.pool:
                h = h.reshape(h.shape[0], h.shape[1] // 2, 2, h.shape[2] // 2, 2, -1).mean(axis=(2, 4))
            pre.append(np.asarray(h))
        mean, var = pre[0].mean(axis=(0, 1, 2)), pre[0].var(axis=(0, 1, 2))
        bn = p["BatchNorm_0"]
        scale, bias = np.asarray(bn["scale"]), np.asarray(bn["bias"])
        h_train, h_test = ((h - mean) / np.sqrt(var + 1e-3) * scale + bias for h in pre)
    pooled = h_test.max(axis=(1, 2)) if global_pool == "max" else h_test.mean(axis=(1, 2))
    return (pooled @ np.asarray(params[f"stages_{len(model.stages) - 1}"]["Dense_0"]["kernel"])).argmax(-1)


@pytest.mark.parametrize("stats_images, global_pool", [(7, "max"), (30, "max"), (30, "avg")])
def test_accuracy_uses_bn_statistics_of_first_training_images(stats_images, global_pool):
    model = rsojax.mnist_convnet(channels=3, global_pool=global_pool)
    x, _ = random_data(48, model.input_shape)
    params = init_params(model, x)
    # make BN matter: a scale and shift that differ per channel
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a + rng.normal(0.3, 0.7, a.shape) if "BatchNorm" in jax.tree_util.keystr(path) else a, params
    )
    x_test, _ = random_data(23, model.input_shape, key=5)
    preds = literal_predictions(model, params, x, x_test, stats_images, global_pool)
    other_pool = "avg" if global_pool == "max" else "max"
    assert np.any(preds != literal_predictions(model, params, x, x_test, stats_images, other_pool))  # the pool matters
    y_test = np.where(np.arange(23) % 3 == 0, (preds + 1) % 10, preds)  # every third one wrong: 15 of 23 right
    got = rsojax.accuracy(model, params, x, x_test, jnp.asarray(y_test), stats_images=stats_images, eval_batch=10)
    assert got == pytest.approx(15 / 23, abs=1e-12)


def test_accuracy_counts_correct_predictions():
    model = rsojax.mlp(hidden=(), input_shape=(3,))
    x = jnp.eye(3, dtype=jnp.float64)
    params = {"stages_0": {"Dense_0": {"kernel": jnp.eye(3, 10, dtype=jnp.float64), "bias": jnp.zeros(10)}}}
    y = jnp.array([0, 1, 5])
    assert rsojax.accuracy(model, params, x, x, y, eval_batch=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="x_test, y_test"):
        rsojax.accuracy(model, params, x, x, y[:2])


def test_init_params_helper_shapes():
    model = rsojax.mnist_convnet(channels=2)
    x, _ = random_data(2, model.input_shape)
    assert jax.tree.map(jnp.shape, init_params(model, x)) == jax.tree.map(jnp.shape, rsojax.init_params(model))
