"""The paper's variants: the distribution of dw, the order inside a layer, the parallel schemes.

Each is checked against the slow literal reference of `test_rso` (float64) run with the same
variant, and for changing nothing else (the minibatch stream, the other layers).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_rso import literal_positions, make_rso, reference_loss, reference_sweep

import rsojax
from rsojax.perturbation import PERTURBATIONS

# The paper's three distributions of dw / sigma_d, written out: N(0, 1), U(-2, 2), {-1, 0, 1}.
UNIT_DRAWS = {
    "normal": lambda key: jax.random.normal(key, (), jnp.float64),
    "uniform": lambda key: 4.0 * jax.random.uniform(key, (), jnp.float64) - 2.0,
    "ternary": lambda key: jnp.asarray(jax.random.randint(key, (), 0, 3) - 1, jnp.float64),
}


def unit_draw(kind):
    """The unit draw of the weight at visit position i, keyed as the engine keys it."""
    return jax.jit(lambda layer_key, i: UNIT_DRAWS[kind](jax.random.fold_in(layer_key, i)))


def literal_threads(shape, granularity):
    """The threads of a parallel scheme as lists of visit positions: each weight alone
    ("layer"), or one thread per output neuron, the last index of a kernel, in visit order
    ("neuron"; each element of a vector is a neuron of its own)."""
    positions = literal_positions(shape)
    if granularity == "layer" or len(shape) < 2:
        return [[i] for i in range(len(positions))]
    return [[i for i, pos in enumerate(positions) if pos[-1] == o] for o in range(shape[-1])]


def test_unit_draws_have_the_stated_distributions():
    keys = jax.random.split(jax.random.key(0), 30_000)
    draws = {k: np.asarray(jax.vmap(lambda key, k=k: PERTURBATIONS[k](key, jnp.float64))(keys)) for k in PERTURBATIONS}
    assert abs(draws["normal"].mean()) < 0.02 and abs(draws["normal"].std() - 1) < 0.02
    u = draws["uniform"]
    assert -2 <= u.min() < -1.99 and 1.99 < u.max() <= 2 and abs(u.var() - 4 / 3) < 0.03
    values, counts = np.unique(draws["ternary"], return_counts=True)
    np.testing.assert_array_equal(values, [-1, 0, 1])
    np.testing.assert_allclose(counts / counts.sum(), [1 / 3] * 3, atol=0.01)


@pytest.mark.parametrize("kind", ["uniform", "ternary"])
def test_perturbation_changes_only_dw(kind, small_mlp):
    model, params, data = small_mlp
    path = "stages_0/Dense_0/kernel"
    rso = make_rso(model, "generic", 8, cycles=3, perturbation=kind)
    state = rso.init(params, jax.random.key(72), data).replace(cycle=jnp.int32(1))
    expected_leaf, choices = reference_sweep(reference_loss(model, path, data[0]), rso, state, data, path, unit=unit_draw(kind))
    new, metrics = rso.layer(state, data, path)
    np.testing.assert_allclose(rsojax.get_leaf(new.params, path), expected_leaf, rtol=0, atol=1e-10)
    assert int(metrics.accepted) == sum(c > 0 for c in choices) > 0
    # Against the default (normal) run: another search, the other layers untouched.
    normal, _ = make_rso(model, "generic", 8, cycles=3).layer(state, data, path)
    assert not np.array_equal(rsojax.get_leaf(new.params, path), rsojax.get_leaf(normal.params, path))
    for other in model.layer_paths():
        if other != path:
            np.testing.assert_array_equal(rsojax.get_leaf(new.params, other), rsojax.get_leaf(params, other))


def test_ternary_zero_draws_keep_the_decayed_weight():
    # With a loss that prefers larger weights, dw = 0 leaves w' and dw = +-sigma moves up by sigma.
    params = {"layer": {"kernel": jnp.zeros((20, 3))}}
    x, y = jnp.zeros((4, 20)), jnp.zeros((4,), jnp.int32)
    config = rsojax.RSOConfig(batch_size=4, weight_decay=0.0, perturbation="ternary", cycles=1, anneal_floor=1.0)
    rso = rsojax.RSO(rsojax.Generic(lambda p, b: -jnp.sum(p["layer"]["kernel"])), ["layer/kernel"], config)
    state, ((_, m),) = rso.cycle(rso.init(params, jax.random.key(0), (x, y)), (x, y))
    sigma = float(rsojax.layer_sigma((20, 3)))
    k = np.asarray(state.params["layer"]["kernel"])
    assert set(np.round(np.unique(k) / sigma, 12)) == {0.0, 1.0}
    assert int(m.accepted) == int((k > 0).sum()) and 10 < int(m.accepted) < 55


def test_input_first_order_matches_reference(small_convnet):
    model, params, data = small_convnet
    path = "stages_1/Conv_0/kernel"
    rso = make_rso(model, "generic", 8, cycles=3, output_first=False)
    state = rso.init(params, jax.random.key(72), data).replace(cycle=jnp.int32(1))
    expected_leaf, choices = reference_sweep(reference_loss(model, path, data[0]), rso, state, data, path)
    new, metrics = rso.layer(state, data, path)
    np.testing.assert_allclose(rsojax.get_leaf(new.params, path), expected_leaf, rtol=0, atol=1e-10)
    assert int(metrics.accepted) == sum(c > 0 for c in choices) > 0
    output_first, _ = make_rso(model, "generic", 8, cycles=3).layer(state, data, path)
    assert not np.allclose(rsojax.get_leaf(new.params, path), rsojax.get_leaf(output_first.params, path))


@pytest.mark.parametrize("granularity", ["layer", "neuron"])
@pytest.mark.parametrize(
    "model_name, evaluator_kind, path",
    [
        ("mlp", "cached", "stages_0/Dense_0/kernel"),
        ("mlp", "cached", "stages_1/Dense_0/bias"),
        ("convnet", "generic", "stages_1/Conv_0/kernel"),
    ],
)
def test_parallel_scheme_matches_literal_reference(granularity, model_name, evaluator_kind, path, small_mlp, small_convnet):
    model, params, data = small_mlp if model_name == "mlp" else small_convnet
    rso = make_rso(model, evaluator_kind, 8, cycles=3, granularity=granularity, parallel_vmap=4)
    # Seed 73: the layer and neuron schemes decide differently here (with 72, alike on the MLP).
    state = rso.init(params, jax.random.key(73), data).replace(cycle=jnp.int32(1))
    shape = rsojax.get_leaf(params, path).shape
    expected_leaf, choices = reference_sweep(
        reference_loss(model, path, data[0]), rso, state, data, path, threads=literal_threads(shape, granularity)
    )
    new, metrics = rso.layer(state, data, path)
    np.testing.assert_allclose(rsojax.get_leaf(new.params, path), expected_leaf, rtol=0, atol=1e-10)
    assert int(metrics.accepted) == sum(c > 0 for c in choices) > 0
    assert int(metrics.weights) == len(choices)
    for other in model.layer_paths():
        if other != path:
            np.testing.assert_array_equal(rsojax.get_leaf(new.params, other), rsojax.get_leaf(params, other))


def test_neuron_threads_differ_from_layer_and_sequential(small_mlp):
    model, params, data = small_mlp
    path = "stages_0/Dense_0/kernel"
    leaves = {}
    for granularity in ("weight", "layer", "neuron"):
        rso = make_rso(model, "cached", 8, cycles=3, granularity=granularity)
        # (With seed 72 the 30 decisions happen to coincide under all three schemes.)
        state = rso.init(params, jax.random.key(73), data).replace(cycle=jnp.int32(1))
        new, _ = rso.layer(state, data, path)
        leaves[granularity] = np.asarray(rsojax.get_leaf(new.params, path))
    assert not np.allclose(leaves["weight"], leaves["neuron"])
    assert not np.allclose(leaves["layer"], leaves["neuron"])
    # A neuron's first weight is searched from the same point under all three schemes.
    np.testing.assert_allclose(leaves["weight"][0], leaves["neuron"][0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(leaves["layer"][0], leaves["neuron"][0], rtol=0, atol=1e-12)


def test_parallel_vmap_size_does_not_change_the_search(small_mlp):
    model, params, data = small_mlp
    path = "stages_0/Dense_0/kernel"
    results = []
    for vmap in (1, 4):
        rso = make_rso(model, "cached", 8, cycles=2, granularity="neuron", parallel_vmap=vmap)
        state, metrics = rso.layer(rso.init(params, jax.random.key(3), data), data, path, chunk_size=7)
        results.append((rsojax.get_leaf(state.params, path), int(metrics.accepted)))
    (a, accepted_a), (b, accepted_b) = results
    assert accepted_a == accepted_b > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_variant_options_are_validated(small_mlp):
    model, params, data = small_mlp
    with pytest.raises(ValueError, match=r"perturbation: expected one of \['normal', 'ternary', 'uniform'\]"):
        rsojax.RSOConfig(perturbation="cauchy")
    with pytest.raises(ValueError, match=r"granularity: expected one of \['weight', 'layer', 'neuron'\]"):
        rsojax.RSOConfig(granularity="block")
    with pytest.raises(ValueError, match="output_first: the 'neuron' granularity"):
        rsojax.RSOConfig(granularity="neuron", output_first=False)
    rso = make_rso(model, "cached", 8, granularity="layer")
    state = rso.init(params, jax.random.key(0), data)
    ctx = rso.prepare(state, data, "stages_0/Dense_0/kernel")
    with pytest.raises(ValueError, match=r"granularity 'layer' sweeps a whole layer \(0, 30\) at once"):
        rso.sweep(state, ctx, "stages_0/Dense_0/kernel", 0, 10)
