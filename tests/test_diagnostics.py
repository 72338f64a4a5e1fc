"""`rsojax.diagnostics`: the decisions from one state are the engine's own decisions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_data

import rsojax
from rsojax.diagnostics import agreement, candidates, decisions
from rsojax.layer_order import get_leaf, weight_order

# A conv kernel (stage 1 reads a pooled input) and the dense head.
PATHS = ["stages_1/Conv_0/kernel", "stages_6/Dense_0/kernel"]


@pytest.fixture(scope="module")
def tiny():
    model = rsojax.mnist_convnet(channels=2)
    x, y = random_data(48, model.input_shape)
    return model, init_params(model, x), (x, y)


def engine(model, **config):
    config = rsojax.RSOConfig(batch_size=16, **config)  # 3 batches: positions 3.. wrap around
    return rsojax.RSO(rsojax.Cached(model), model.search_order(), config)


@pytest.mark.parametrize("path", PATHS)
def test_decisions_are_the_sweeps(tiny, path):
    """Each weight swept alone by the engine from the same state takes the decision, and the
    value, that `candidates` and `decisions` give, in any order of positions; at a later
    cycle, so the anneal and the cycle's keys count."""
    model, params, data = tiny
    rso = engine(model)
    state = rso.init(params, jax.random.key(3), data).replace(cycle=jnp.int32(2))
    ctx = rso.prepare(state, data, path)
    positions = np.arange(8)
    values, _ = candidates(rso, state, data, path, positions)
    chosen = decisions(rso, state, data, path, positions)
    assert chosen.dtype == jnp.int32 and chosen.shape == (8,)
    np.testing.assert_array_equal(decisions(rso, state, data, path, positions[::-1]), chosen[::-1])
    order = weight_order(get_leaf(params, path).shape)
    for i in positions:
        swept, m = rso.sweep(state, ctx, path, int(i), int(i) + 1)
        new = get_leaf(swept.params, path).ravel()[order[i]]
        assert int(chosen[i]) >= 0 and int(m.nonfinite) == 0
        assert int(m.accepted) == int(chosen[i] > 0)
        # The same dw, w' and choice: XLA may fuse w' - dw differently in the two programs (an ulp).
        np.testing.assert_allclose(new, values[i, chosen[i]], rtol=1e-14)
    assert set(np.asarray(chosen).tolist()) & {1, 2}  # not vacuous: some weights move


def test_precisions_agree_on_cpu(tiny):
    """CPUs compute float32 exactly at either precision: the same decisions and losses."""
    model, params, data = tiny
    x, y = data
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    data32 = (x.astype(jnp.float32), y)
    a, b = (engine(model, precision=p) for p in ("float32", "default"))
    state = a.init(params32, jax.random.key(0), data32)
    result = agreement(a, b, state, data32, PATHS[0], np.arange(a.n_weights(state, PATHS[0])))
    assert result["weights"] == 36 and result["agree"] == 36 and result["agreement"] == 1.0
    assert result["median_loss_error"] == 0.0 and result["median_gap"] > 0.0


def test_refuses_a_per_weight_context(tiny):
    model, params, data = tiny
    rso = rsojax.RSO(rsojax.Incremental(model), model.search_order(), rsojax.RSOConfig(batch_size=16))
    state = rso.init(params, jax.random.key(0), data)
    with pytest.raises(ValueError, match="use Cached"):
        decisions(rso, state, data, PATHS[0], [0])


def test_refuses_positions_out_of_range(tiny):
    model, params, data = tiny
    rso = engine(model)
    state = rso.init(params, jax.random.key(0), data)
    with pytest.raises(ValueError, match="positions"):
        decisions(rso, state, data, PATHS[0], [36])


def test_refuses_a_layer_it_does_not_search(tiny):
    model, params, data = tiny
    rso = engine(model)
    state = rso.init(params, jax.random.key(0), data)
    with pytest.raises(ValueError, match="not one of the layers"):
        decisions(rso, state, data, "stages_1/Conv_0/bias", [0])
