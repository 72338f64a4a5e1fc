"""`rsojax.diagnostics`: the decisions from one state are the engine's own decisions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_data
from test_rso import reference_loss, reference_sweep

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
def test_decisions_match_the_literal_reference(tiny, path):
    """Each weight decided from one state takes the decision, and the value, of the slow
    float64 reference searching that weight alone from the same state, in any order of
    positions; at a later cycle, so the anneal and the cycle's keys count. The engine's sweep
    of each weight alone takes it too."""
    model, params, data = tiny
    rso = engine(model)
    state = rso.init(params, jax.random.key(3), data).replace(cycle=jnp.int32(2))
    positions = np.arange(8)
    values, _ = candidates(rso, state, data, path, positions)
    chosen = decisions(rso, state, data, path, positions)
    assert chosen.dtype == jnp.int32 and chosen.shape == (8,)
    np.testing.assert_array_equal(decisions(rso, state, data, path, positions[::-1]), chosen[::-1])
    alone = [[int(i)] for i in positions]  # one thread per weight: each from `state`
    expected_leaf, expected = reference_sweep(reference_loss(model, path, data[0]), rso, state, data, path, threads=alone)
    assert np.asarray(chosen).tolist() == expected
    order = weight_order(get_leaf(params, path).shape)
    kept = np.asarray(values)[positions, np.asarray(chosen)]
    np.testing.assert_allclose(kept, expected_leaf.ravel()[order[positions]], rtol=1e-14)
    for i in positions:
        swept, _, _ = rso.sweep(state, rso.prepare(state, data, path), path, int(i), int(i) + 1)
        # The same dw, w' and choice: XLA may fuse w' - dw differently in the two programs (an ulp).
        np.testing.assert_allclose(get_leaf(swept.params, path).ravel()[order[i]], kept[i], rtol=1e-14)
    assert set(expected) & {1, 2}  # not vacuous: some weights move


def test_agreement_counts_equal_decisions_and_measures_the_losses(tiny):
    """`agreement` of two engines that decide differently (another dw): its counts and
    medians, written out here from the two engines' candidate losses."""
    model, params, data = tiny
    a, b = engine(model), engine(model, perturbation="ternary")
    state = a.init(params, jax.random.key(0), data)
    positions = np.arange(a.n_weights(state, PATHS[0]))
    result = agreement(a, b, state, data, PATHS[0], positions)
    losses_a, losses_b = (np.asarray(candidates(e, state, data, PATHS[0], positions)[1]) for e in (a, b))
    first_lowest = [np.argmin(losses_a, axis=1), np.argmin(losses_b, axis=1)]  # every loss is finite here
    assert np.isfinite(losses_a).all() and np.isfinite(losses_b).all()
    agree = int((first_lowest[0] == first_lowest[1]).sum())
    assert 0 < agree < 36  # the engines disagree on some weights: the count is tested
    gaps = np.sort(losses_a, axis=1)[:, 1] - np.sort(losses_a, axis=1)[:, 0]
    assert result == {
        "weights": 36,
        "agree": agree,
        "agreement": agree / 36,
        "median_loss_error": pytest.approx(np.median(np.abs(losses_b - losses_a)), rel=1e-12),
        "median_gap": pytest.approx(np.median(gaps), rel=1e-12),
    }


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
