"""Every evaluator takes the same decisions; the registry and the caching pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_incremental import LAYERS, make_rso, small_net

import rsojax
from rsojax.evaluators import EVALUATORS, applicable, default_evaluator
from rsojax.evaluators.incremental import _conv_output
from rsojax.evaluators.stage_inputs import _distinct_stage_inputs, in_passes, stage_inputs


def test_float64_cycle_identical_for_every_evaluator():
    """Over a cycle (the layers of `LAYERS`, every branch of every evaluator), all evaluators
    end with the parameters of `Uncached`, which recomputes every candidate from the images;
    `Incremental` also in chunks of 50 weights, each starting from a freshly prepared cache."""
    model, params, data = small_net()
    final, accepted = {}, {}
    runs = [(name, None) for name in EVALUATORS] + [("incremental", 50)]
    for name, chunk_size in runs:
        rso = make_rso(EVALUATORS[name](model), LAYERS)
        state, metrics = rso.cycle(rso.init(params, jax.random.key(7), data), data, chunk_size=chunk_size)
        final[name, chunk_size] = state.params
        accepted[name, chunk_size] = [int(m.accepted) for _, m in metrics]
    reference = ("generic", None)
    assert min(accepted[reference]) > 0
    for run in runs:
        assert accepted[run] == accepted[reference], run
        for a, b in zip(jax.tree.leaves(final[run]), jax.tree.leaves(final[reference])):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10, err_msg=str(run))


def test_caching_pass_uses_the_statistics_of_the_first_training_images():
    """The cached input of stage 2 is stages 0 and 1 in inference mode, BN normalised with the
    mean and variance of the first `stats_images` training images (written out here)."""
    model, params, (x, y) = small_net(channels=2, n=40)
    inputs = stage_inputs(model, params, (x, y), 2, cache_batch=16, stats_images=24)
    h = x
    for d in range(2):
        stage, p = model.stages[d], params[f"stages_{d}"]
        z = jax.nn.relu(h) if stage.relu_in else h
        z = jax.lax.conv_general_dilated(z, p["Conv_0"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if stage.pool:
            z = z.reshape(z.shape[0], z.shape[1] // 2, 2, z.shape[2] // 2, 2, -1).mean(axis=(2, 4))
        mean, var = z[:24].mean(axis=(0, 1, 2)), z[:24].var(axis=(0, 1, 2))
        h = (z - mean) / jnp.sqrt(var + 1e-3) * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"]
    np.testing.assert_allclose(jnp.moveaxis(inputs.h_S[2], 0, -1), h, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(inputs.y_N, y)
    # Reused while the stages before are unchanged, recomputed once they change.
    again = stage_inputs(model, params, (x, y), 1, previous=inputs)
    assert again.h_S[1] is inputs.h_S[1] and len(again.h_S) == 2
    changed = jax.tree.map(lambda a: a, params)
    changed["stages_0"]["BatchNorm_0"]["bias"] = params["stages_0"]["BatchNorm_0"]["bias"] + 1.0
    fresh = stage_inputs(model, changed, (x, y), 1, previous=inputs)
    assert not np.allclose(fresh.h_S[1], inputs.h_S[1])


def test_caches_are_the_same_bits_in_passes_of_any_size():
    """The caching pass and `Incremental`'s conv cache are the same float32 bits in one pass
    of 40 images as in passes of 16 (two and a remainder): the pass size, which
    `default_cache_batch` picks per backend, changes speed and memory, never a decision."""
    model, params, (x, y) = small_net(channels=2, n=40, dtype=jnp.float32)
    one, passes = (stage_inputs(model, params, (x, y), 2, cache_batch=size) for size in (40, 16))
    for a, b in zip(one.h_S, passes.h_S):
        np.testing.assert_array_equal(a, b)
    kernel = params["stages_1"]["Conv_0"]["kernel"]
    p_one, p_passes = (_conv_output(model.stages[1], one.h_S[1], kernel, size) for size in (40, 16))
    np.testing.assert_array_equal(p_one, p_passes)


@pytest.mark.parametrize("n, size", [(7, 3), (9, 3), (7, 7), (5, 8)])
def test_passes_add_every_example_once(n, size):
    """`in_passes` with `ahead`, which computes each pass an iteration before it writes it,
    adds what it adds without: every example once, at its own position, full passes, a
    remainder, a single pass, a pass longer than the examples."""
    x = jnp.arange(1.0, n + 1)

    def change(start, length):
        return jax.lax.dynamic_slice(x, (start,), (length,)) * 10.0

    def add(total, done, start):
        return jax.lax.dynamic_update_slice(total, jax.lax.dynamic_slice(total, (start,), done.shape) + done, (start,))

    passes = jax.jit(in_passes, static_argnums=(0, 1, 3, 4, 5))
    for ahead in (True, False):
        total = passes(change, add, jnp.ones(n), n, size, ahead)
        np.testing.assert_array_equal(total, 1.0 + 10.0 * np.arange(1.0, n + 1))


def test_caching_passes_hold_their_outputs_and_one_pass():
    """The caching pass and `Incremental`'s conv cache write each pass in place into their
    channel-major outputs: the compiled programs' temporaries are one pass, the same for 64
    and 256 examples (a stacked or transposed copy of the passes would grow with them)."""
    model, params, (x, y) = small_net(channels=2, n=256)
    kernel = params["stages_1"]["Conv_0"]["kernel"]

    def temporaries(n):
        h_1 = stage_inputs(model, params, (x[:n], y[:n]), 1).h_S[1]  # (C, N, H, W)
        programs = (_distinct_stage_inputs.lower(model, params, x[:n], len(model.stages), 8, 16),
                    _conv_output.lower(model.stages[1], h_1, kernel, 8))
        return [lowered.compile().memory_analysis().temp_size_in_bytes for lowered in programs]

    assert temporaries(256) == temporaries(64)


def test_registry_and_default_evaluator():
    convnet, resnet = rsojax.mnist_convnet(channels=2), rsojax.cifar10_resnet(channels=2)
    assert applicable(convnet) == applicable(resnet) == ["incremental", "cached", "generic"]
    assert isinstance(default_evaluator(convnet), rsojax.Incremental)
    assert isinstance(default_evaluator(convnet, "layer"), rsojax.Cached)  # parallel-safe
    assert isinstance(EVALUATORS["generic"](convnet), rsojax.Uncached)
    other = nn.Dense(3)  # not a chain of stages: only the generic path applies
    assert applicable(other) == ["generic"]
    for name in ("incremental", "cached"):
        with pytest.raises(ValueError, match=f"model: {EVALUATORS[name].__name__} needs a rsojax.Sequential"):
            EVALUATORS[name](other)
    with pytest.raises(ValueError, match="granularity: 'layer' searches against the layer's starting point"):
        rsojax.RSO(rsojax.Incremental(convnet), convnet.search_order(), rsojax.RSOConfig(granularity="layer"))
