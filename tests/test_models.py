import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_data

import rsojax
from rsojax.models import avg_pool_2x2, stage_of


def test_paper_network_sizes():
    model = rsojax.mnist_convnet()
    x, _ = random_data(2, model.input_shape)
    params = init_params(model, x)
    kernels = [rsojax.get_leaf(params, p).size for p in model.layer_paths(kernels_only=True)]
    assert sum(kernels[:-1]) == 11_664 and kernels[-1] == 160
    assert sum(a.size for a in jax.tree.leaves(params)) == 12_016
    assert model.apply({"params": params}, x).shape == (2, 10)
    # 28 -> 14 after conv 2, 7 after conv 4
    assert model.apply({"params": params}, x, stop=2).shape == (2, 14, 14, 16)
    assert model.apply({"params": params}, x, stop=4).shape == (2, 7, 7, 16)


def test_paper_search_order_matches_reference_code():
    order = rsojax.mnist_convnet().search_order()
    expected = ["stages_6/Dense_0/kernel"]
    for i in range(5, -1, -1):
        expected += [f"stages_{i}/Conv_0/kernel", f"stages_{i}/BatchNorm_0/bias", f"stages_{i}/BatchNorm_0/scale"]
    assert order == expected
    assert rsojax.mnist_convnet().search_order(kernels_only=True) == [
        "stages_6/Dense_0/kernel",
        *[f"stages_{i}/Conv_0/kernel" for i in range(5, -1, -1)],
    ]


def test_search_order_is_execution_order_not_sorted_keys():
    model = rsojax.mlp(hidden=(4,) * 11, input_shape=(3,))  # 12 layers: stages_0 .. stages_11
    order = model.search_order(kernels_only=True)
    assert order == [f"stages_{i}/Dense_0/kernel" for i in range(11, -1, -1)]
    x, _ = random_data(2, model.input_shape)
    params = init_params(model, x)
    # jax flattens dicts in sorted-key order (stages_10 right after stages_1); RSO must not follow it
    flattened = [path[0].key for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert flattened.index("stages_10") < flattened.index("stages_2")
    assert [stage_of(p) for p in order] == list(range(11, -1, -1))


def test_forward_from_any_stage_composes(small_convnet):
    model, params, (x, _) = small_convnet
    full = model.apply({"params": params}, x)
    for d in range(len(model.stages)):
        h = model.apply({"params": params}, x, stop=d)
        np.testing.assert_allclose(model.apply({"params": params}, h, start=d), full, rtol=1e-12, atol=1e-12)


def test_batchnorm_matches_literal_formula():
    x = jax.random.normal(jax.random.key(3), (7, 5, 5, 4), jnp.float64)
    bn = rsojax.models.BatchNorm()
    params = {"scale": jnp.arange(1.0, 5.0), "bias": jnp.arange(4.0)}
    out = bn.apply({"params": params}, x, train=True)
    xn = np.asarray(x)
    mean, var = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))
    expected = (xn - mean) / np.sqrt(var + 1e-3) * np.arange(1.0, 5.0) + np.arange(4.0)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="batch_stats"):
        bn.apply({"params": params}, x, train=False)


def test_stage_of_rejects_foreign_paths():
    with pytest.raises(ValueError, match="layers"):
        stage_of("Dense_0/kernel")


@pytest.mark.parametrize("global_pool, reduce", [("max", np.max), ("avg", np.mean)])
def test_head_ends_in_the_global_pool_of_the_reference_code(small_convnet, global_pool, reduce):
    """Max by default (MXNet's `Pooling(global_pool=True)` without a pool_type), avg as an option."""
    _, params, (x, _) = small_convnet
    model = rsojax.mnist_convnet(channels=3, global_pool=global_pool)
    h = np.asarray(model.apply({"params": params}, x, stop=6))
    expected = reduce(h, axis=(1, 2)) @ np.asarray(params["stages_6"]["Dense_0"]["kernel"])
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-12, atol=1e-12)
    assert rsojax.mnist_convnet().stages[-1].global_pool == "max" == rsojax.cifar10_resnet().global_pool
    with pytest.raises(ValueError, match=r"global_pool: expected one of \['max', 'avg'\], got 'mean'"):
        rsojax.mnist_convnet(global_pool="mean")
    with pytest.raises(ValueError, match="global_pool"):
        rsojax.cifar10_resnet(global_pool="sum")


def test_avg_pool_2x2_is_flax_avg_pool():
    """The blocks' pool, written as strided slices for XLA:CPU, is `nn.avg_pool` (odd sizes too)."""
    for shape in ((3, 8, 6, 5), (2, 7, 9, 1)):
        x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        np.testing.assert_allclose(avg_pool_2x2(x), nn.avg_pool(x, (2, 2), strides=(2, 2)), rtol=1e-15, atol=1e-15)
