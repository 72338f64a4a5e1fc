import jax.numpy as jnp
import numpy as np
import pytest

from rsojax.layer_order import check_layers, get_leaf, set_leaf, weight_order


def test_conv_order_is_output_input_row_column():
    shape = (3, 3, 2, 4)  # HWIO
    flat = weight_order(shape)
    positions = [np.unravel_index(f, shape) for f in flat]
    expected = [(h, w, i, o) for o in range(4) for i in range(2) for h in range(3) for w in range(3)]
    assert [tuple(int(v) for v in p) for p in positions] == expected


def test_dense_order_is_per_output_neuron():
    shape = (3, 2)  # (in, out)
    positions = [tuple(int(v) for v in np.unravel_index(f, shape)) for f in weight_order(shape)]
    assert positions == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    positions = [tuple(int(v) for v in np.unravel_index(f, shape)) for f in weight_order(shape, output_first=False)]
    assert positions == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    np.testing.assert_array_equal(weight_order((5,)), np.arange(5))


def test_set_leaf_leaves_input_untouched():
    params = {"a": {"k": jnp.zeros(2)}, "b": {"k": jnp.ones(2)}}
    new = set_leaf(params, "a/k", jnp.full(2, 7.0))
    np.testing.assert_array_equal(params["a"]["k"], jnp.zeros(2))
    np.testing.assert_array_equal(get_leaf(new, "a/k"), jnp.full(2, 7.0))
    assert new["b"] is params["b"]


def test_check_layers_errors_name_the_argument():
    params = {"a": {"kernel": jnp.zeros((2, 2))}, "n": {"count": jnp.zeros(2, jnp.int32)}}
    with pytest.raises(ValueError, match="layers: the list of layers to search is empty"):
        check_layers(params, [])
    with pytest.raises(ValueError, match="layers: unknown layer 'a/bias'"):
        check_layers(params, ["a/bias"])
    with pytest.raises(TypeError, match="params: layer 'n/count' has dtype int32"):
        check_layers(params, ["n/count"])
    with pytest.raises(TypeError, match="layers"):
        check_layers(params, "a/kernel")
    assert check_layers(params, ["a/kernel"]) == ("a/kernel",)
