"""`Incremental` against `Cached`: same losses, same decisions, consistent caches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_data

import rsojax
from rsojax.incremental import Incremental
from rsojax.sampling import next_batch
from rsojax.schedule import anneal


def small_net(channels=4, n=64, dtype=jnp.float64):
    model = rsojax.mnist_convnet(channels=channels)
    x, y = random_data(n, model.input_shape, key=3, dtype=dtype)
    return model, init_params(model, x, dtype=dtype), (x, y)


def make_rso(evaluator, model, batch_size, **config):
    return rsojax.RSO(evaluator, model.search_order(), rsojax.RSOConfig(batch_size=batch_size, cycles=2, **config))


def test_losses_equal_cached_for_every_layer():
    model, params, data = small_net()
    cached, incremental = rsojax.Cached(model, 24), Incremental(model, 24)
    c_losses, i_losses = (jax.jit(e.losses, static_argnames="path") for e in (cached, incremental))
    idx_B = jnp.arange(5, 53, 2)
    for path in model.search_order():
        ctx_c, ctx_i = cached.prepare(params, path, data), incremental.prepare(params, path, data)
        leaf = rsojax.get_leaf(params, path)
        for j in (0, leaf.size // 3, leaf.size - 1):
            w = leaf.ravel()[j]
            values_3 = jnp.stack([w * 0.9, w + 0.4, w - 0.3])
            expected = c_losses(ctx_c, params, path, j, values_3, idx_B)
            np.testing.assert_allclose(i_losses(ctx_i, params, path, j, values_3, idx_B), expected, rtol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 50])
def test_float64_cycle_identical_to_cached(chunk_size):
    # chunk_size=50: every sweep call starts from the prepared cache and must catch up.
    model, params, data = small_net()
    results = []
    for evaluator in (rsojax.Cached(model, 24), Incremental(model, 24)):
        rso = make_rso(evaluator, model, 32)
        state, metrics = rso.cycle(rso.init(params, jax.random.key(7), data), data, chunk_size=chunk_size)
        results.append((state.params, [int(m.accepted) for _, m in metrics]))
    (p_cached, acc_cached), (p_inc, acc_inc) = results
    assert acc_inc == acc_cached and sum(acc_cached) > 0
    for a, b in zip(jax.tree.leaves(p_cached), jax.tree.leaves(p_inc)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


def test_float32_decisions_agree_with_cached():
    """Both evaluators decide every weight of a cycle from the same state and the same draws."""
    model, params, data = small_net(dtype=jnp.float32)
    cached, incremental = rsojax.Cached(model, 24), Incremental(model, 24)
    rso = make_rso(cached, model, 32)
    state = rso.init(params, jax.random.key(11), data)
    cfg = rso.config
    c_losses, i_losses = jax.jit(cached.losses, static_argnames="path"), jax.jit(incremental.losses, static_argnames="path")
    i_update = jax.jit(incremental.update, static_argnames="path")
    params, sampler, agree, total = state.params, state.sampler, 0, 0
    for path in rso.layers:
        leaf = rsojax.get_leaf(params, path)
        sigma = float(state.sigmas[path]) * float(anneal(state.cycle, cfg.cycles, cfg.anneal_floor))
        layer_key = jax.random.fold_in(jax.random.fold_in(state.key, state.cycle), rso.layers.index(path))
        ctx_c, ctx_i = cached.prepare(params, path, data), incremental.prepare(params, path, data)
        for i, j in enumerate(rsojax.weight_order(leaf.shape)):
            idx_B, sampler = next_batch(sampler, cfg.batch_size)
            flat = rsojax.get_leaf(params, path).ravel()
            dw = sigma * jax.random.normal(jax.random.fold_in(layer_key, i), (), jnp.float32)
            w_decayed = flat[j] * (1 - cfg.weight_decay)
            values_3 = jnp.stack([w_decayed, w_decayed + dw, w_decayed - dw])
            choice = int(rsojax.choose(c_losses(ctx_c, params, path, j, values_3, idx_B)))
            agree += choice == int(rsojax.choose(i_losses(ctx_i, params, path, j, values_3, idx_B)))
            total += 1
            new = values_3[choice]
            params = rsojax.set_leaf(params, path, flat.at[j].set(new).reshape(leaf.shape))
            ctx_i = i_update(ctx_i, params, path, j, flat[j], new)
    assert total == sum(leaf.size for leaf in jax.tree.leaves(params))
    assert agree >= 0.999 * total, (agree, total)


def test_update_keeps_the_cache_consistent():
    model, params, data = small_net()
    incremental = Incremental(model, 24)
    path = "stages_2/Conv_0/kernel"
    ctx = incremental.prepare(params, path, data)
    kernel = rsojax.get_leaf(params, path)
    update = jax.jit(incremental.update, static_argnames="path")
    # A sweep's worth of changes in visit order, then a few out of order (several channels stale).
    order = rsojax.weight_order(kernel.shape)
    changes = [*order[: kernel.size // 2], order[-1], order[0], order[-5]]
    rng = np.random.default_rng(0)
    for j in changes:
        flat = rsojax.get_leaf(params, path).ravel()
        new = flat[j] + rng.normal()
        params = rsojax.set_leaf(params, path, flat.at[j].set(new).reshape(kernel.shape))
        ctx = update(ctx, params, path, int(j), flat[j], new)
    settled = incremental.settle(ctx, params, path)
    fresh = incremental.prepare(params, path, data)
    np.testing.assert_allclose(settled.p_OxNxHxW, fresh.p_OxNxHxW, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(settled.kernel, fresh.kernel)
    # Before settling, at most one channel (the one being searched) is pending.
    stale_O = np.any(np.asarray(ctx.kernel) != np.asarray(rsojax.get_leaf(params, path)), axis=(0, 1, 2))
    assert stale_O.sum() <= 1


def test_other_models_fall_back_and_bad_model_raises(small_mlp):
    model, params, data = small_mlp
    rso_c, rso_i = (make_rso(e(model), model, 8) for e in (rsojax.Cached, Incremental))
    results = [rso.cycle(rso.init(params, jax.random.key(0), data), data)[0].params for rso in (rso_c, rso_i)]
    for a, b in zip(*map(jax.tree.leaves, results)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="model: Incremental needs a rsojax.Sequential"):
        Incremental(lambda p, x: x)
