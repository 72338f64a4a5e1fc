"""`Incremental` against `Cached`: the same decisions in float32, consistent caches.

(Its float64 decisions over a cycle are compared with every other evaluator in
`test_evaluators.py`.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_data
from test_rso import reference_loss, reference_sweep

import rsojax
from rsojax.evaluators import Incremental
from rsojax.evaluators.incremental import ConvContext
from rsojax.evaluators.stage_inputs import StageInputs
from rsojax.rso import choose
from rsojax.sampling import batch_at, block_permutation
from rsojax.schedule import anneal


def small_net(channels=4, n=64, dtype=jnp.float64):
    model = rsojax.mnist_convnet(channels=channels)
    x, y = random_data(n, model.input_shape, key=3, dtype=dtype)
    return model, init_params(model, x, dtype=dtype), (x, y)


# Compilation dominates the runtime here (one per layer and evaluator), so the cycle runs over
# a subset of layers that takes every branch of `Incremental`: the head (as `Cached`), the last
# conv (head next), a conv with a ConvBlock next, BN beta and gamma, pooled stages and stage 0.
LAYERS = [
    "stages_6/Dense_0/kernel",
    "stages_5/Conv_0/kernel",
    "stages_5/BatchNorm_0/scale",
    "stages_2/BatchNorm_0/bias",
    "stages_1/Conv_0/kernel",
    "stages_0/Conv_0/kernel",
    "stages_0/BatchNorm_0/scale",
]


def make_rso(evaluator, layers, batch_size=32):
    return rsojax.RSO(evaluator, layers, rsojax.RSOConfig(batch_size=batch_size, cycles=2))


def test_float32_decisions_agree_with_cached():
    """Both evaluators decide every weight from the same state and the same draws (the engine's)."""
    model, params, data = small_net(dtype=jnp.float32)
    cached, incremental = rsojax.Cached(model, 24), Incremental(model, 24)
    rso = make_rso(cached, LAYERS[:2] + LAYERS[4:6])
    state = rso.init(params, jax.random.key(11), data)
    cfg = rso.config

    @functools.partial(jax.jit, static_argnames="path")
    def decide(params, ctx_c, ctx_i, perm_N, layer_key, sigma, i, path):
        leaf = rsojax.get_leaf(params, path)
        idx_B = batch_at(perm_N, i, cfg.batch_size)
        j = jnp.asarray(rsojax.weight_order(leaf.shape))[i]
        flat = leaf.ravel()
        dw = sigma * jax.random.normal(jax.random.fold_in(layer_key, i), (), leaf.dtype)
        w_decayed = flat[j] * (1 - cfg.weight_decay)
        values_3 = jnp.stack([w_decayed, w_decayed + dw, w_decayed - dw])
        ctx_i = incremental.refresh(ctx_i, params, path, j)
        choice_c = choose(cached.losses(ctx_c, params, path, j, values_3, idx_B))
        choice_i = choose(incremental.losses(ctx_i, params, path, j, values_3, idx_B))
        new = values_3[choice_c]
        params = rsojax.set_leaf(params, path, flat.at[j].set(new).reshape(leaf.shape))
        return params, ctx_i, choice_c == choice_i

    params, agree = state.params, []
    for layer, path in enumerate(rso.layers):
        sigma = state.sigmas[path] * anneal(state.cycle, cfg.cycles, cfg.anneal_floor).astype(jnp.float32)
        layer_key = jax.random.fold_in(jax.random.fold_in(state.key, state.cycle), layer)
        perm_N = block_permutation(state.data_key, state.cycle, rso.blocks[layer], state.n_examples)
        ctx_c, ctx_i = cached.prepare(params, path, data), incremental.prepare(params, path, data)
        for i in range(rsojax.get_leaf(params, path).size):
            params, ctx_i, same = decide(params, ctx_c, ctx_i, perm_N, layer_key, sigma, i, path)
            agree.append(bool(same))
    assert len(agree) == 40 + 144 + 144 + 36
    assert sum(agree) >= 0.999 * len(agree), (sum(agree), len(agree))


def test_a_first_stage_of_one_channel_keeps_no_cache():
    """MNIST's first conv is computed on each weight's batch: its layers get the stage inputs
    alone, no P over the training set; the stages after it keep P."""
    model, params, data = small_net()
    incremental = Incremental(model, 24)
    for path in ("stages_0/Conv_0/kernel", "stages_0/BatchNorm_0/bias"):
        assert type(incremental.prepare(params, path, data)) is StageInputs, path
    assert isinstance(incremental.prepare(params, "stages_1/Conv_0/kernel", data), ConvContext)


def test_refresh_keeps_the_cache_exact():
    model, params, data = small_net()
    incremental = Incremental(model, 24)
    path = "stages_2/Conv_0/kernel"
    ctx = incremental.prepare(params, path, data)
    kernel = rsojax.get_leaf(params, path)
    refresh = jax.jit(incremental.refresh, static_argnames="path")
    # Half a sweep's worth of changes in visit order, then a few out of order.
    order = rsojax.weight_order(kernel.shape)
    changes = [*order[: kernel.size // 2], order[-1], order[0], order[-5]]
    rng = np.random.default_rng(0)
    for j in changes:
        ctx = refresh(ctx, params, path, int(j))
        flat = rsojax.get_leaf(params, path).ravel()
        params = rsojax.set_leaf(params, path, flat.at[j].set(flat[j] + rng.normal()).reshape(kernel.shape))
    # Moving on to a weight of another (input, output) channel pair folds the pending pair in.
    j_next = int(order[kernel.size // 2 + 20])
    ctx = refresh(ctx, params, path, j_next)
    np.testing.assert_allclose(ctx.p_OxNxHxW, incremental.prepare(params, path, data).p_OxNxHxW, rtol=0, atol=1e-10)
    # A change to the pending pair is not in the whole-set cache until the search moves on.
    flat = rsojax.get_leaf(params, path).ravel()
    params = rsojax.set_leaf(params, path, flat.at[j_next].add(1.0).reshape(kernel.shape))
    fresh = incremental.prepare(params, path, data).p_OxNxHxW
    assert np.abs(np.asarray(ctx.p_OxNxHxW) - np.asarray(fresh)).max() > 1e-3
    ctx = refresh(ctx, params, path, int(order[0]))
    np.testing.assert_allclose(ctx.p_OxNxHxW, fresh, rtol=0, atol=1e-10)


@pytest.mark.parametrize("path", ["stages_1/Conv_0/kernel", "stages_2/Conv_0/kernel"])  # pooled, not pooled
def test_shift_layouts_give_the_same_losses(path):
    """`shifts_axis` (chosen per backend) changes where the 9 pooled shifts are stored, not the losses."""
    model, params, data = small_net()
    kernel = rsojax.get_leaf(params, path)
    js = (0, 4, 8, 9, 77, kernel.size - 1)  # within a pair, across pairs (a fold), the last weight

    def losses(axis):
        incremental = Incremental(model, 24, shifts_axis=axis)

        @jax.jit
        def step(ctx, j):
            ctx = incremental.refresh(ctx, params, path, j)
            values_3 = kernel.ravel()[j] + jnp.array([0.0, 0.3, -0.3])
            return ctx, incremental.losses(ctx, params, path, j, values_3, jnp.arange(32))

        ctx, out = incremental.prepare(params, path, data), []
        for j in js:
            ctx, losses_3 = step(ctx, j)
            out.append(losses_3)
        return np.stack(out)

    first, last = losses(0), losses(-1)
    assert np.ptp(first, axis=1).min() > 0  # the candidates differ
    np.testing.assert_allclose(first, last, rtol=1e-13, atol=0)


def test_other_models_match_the_literal_reference_and_bad_model_raises(small_mlp):
    """Stages without a 3x3 conv (an MLP's) take the literal float64 reference's decisions."""
    model, params, data = small_mlp
    rso = make_rso(Incremental(model), model.search_order(), 8)
    state = rso.init(params, jax.random.key(0), data).replace(cycle=jnp.int32(1))
    moved = 0
    for path in ("stages_1/Dense_0/kernel", "stages_0/Dense_0/bias"):
        expected_leaf, choices = reference_sweep(reference_loss(model, path, data[0]), rso, state, data, path)
        new, metrics = rso.layer(state, data, path)
        np.testing.assert_allclose(rsojax.get_leaf(new.params, path), expected_leaf, rtol=0, atol=1e-10)
        assert int(metrics.accepted) == sum(c > 0 for c in choices)
        moved += int(metrics.accepted)
    assert moved > 0
    with pytest.raises(ValueError, match="model: Incremental needs a rsojax.Sequential"):
        Incremental(lambda p, x: x)
