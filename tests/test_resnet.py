"""The CIFAR-10 residual network as a chain of stages: its forward written out, the caching pass
over pytree stage inputs, and every evaluator against the float64 literal reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_data
from test_rso import reference_loss, reference_sweep

import rsojax
from rsojax.evaluators import EVALUATORS, StageInputs, applicable, default_evaluator
from rsojax.evaluators.incremental import ConvContext
from rsojax.evaluators.stage_inputs import batch_major, stage_inputs
from rsojax.models import stage_of
from rsojax.rso import choose
from rsojax.sampling import batch_at, block_permutation
from rsojax.schedule import anneal

# Weights of every kind of stage and every path of Incremental, in the whole network (the
# cycles of `small_resnet(blocks=7)`: `CYCLE_LAYERS`): the head; a residual block (9) before the head; a residual
# block's kernel (7) before a block that passes its input on; the shortcut block (5: its BN, whose
# input adds the shortcut, the shortcut's conv and its BN's gamma); a block (4) before the
# shortcut block; a block that passes its input on as a skip (2) before a residual block;
# block 1 (a ConvBlock).
LAYERS = [
    "stages_9/Dense_0/kernel",
    "stages_8/BatchNorm_0/bias",
    "stages_6/Conv_0/kernel",
    "stages_4/BatchNorm_0/scale",
    "stages_4/shortcut_conv/kernel",
    "stages_4/shortcut_bn/scale",
    "stages_3/Conv_0/kernel",
    "stages_1/Conv_0/kernel",
    "stages_0/Conv_0/kernel",
]
SKIP_STAGES = (2, 4, 6, 8)  # the stages (blocks 3, 5, 7, 9) whose input is (h, skip)
# The layers of the cycles of `small_resnet(blocks=7)` (whose head is stage 7), in search order:
# a layer of every kind of stage and every path of Incremental, as `LAYERS` in the whole network,
# and the kernels of every block (the pooled residual blocks 3 and 5 among them); the BN
# parameters of the other blocks take the paths of those here, each compiled per layer. Not the
# shortcut's BN beta: the loss does not depend on it
# (`test_forward_written_out_and_composes_from_any_stage`), so rounding alone decides its search.
CYCLE_LAYERS = (
    "stages_7/Dense_0/kernel",
    "stages_6/Conv_0/kernel",
    "stages_6/BatchNorm_0/bias",
    "stages_5/Conv_0/kernel",
    "stages_4/Conv_0/kernel",
    "stages_4/BatchNorm_0/scale",
    "stages_4/shortcut_conv/kernel",
    "stages_4/shortcut_bn/scale",
    "stages_3/Conv_0/kernel",
    "stages_2/Conv_0/kernel",
    "stages_1/Conv_0/kernel",
    "stages_0/Conv_0/kernel",
    "stages_0/BatchNorm_0/bias",
)


def small_resnet(n=24, dtype=jnp.float64, blocks=9):
    """The network at 2 channels; with `blocks` < 9, its blocks 1..`blocks` and its head. Blocks
    1-7 have every kind of block and of stage boundary (a ConvBlock; a block passing its input on
    as a skip; a residual block, pooled, before such a block; the shortcut block; a residual
    block before the head) in 25 layers and 730 weights, so that whole cycles compile in seconds."""
    full = rsojax.cifar10_resnet(channels=2)
    model = rsojax.ResidualNet(stages=(*full.stages[:blocks], full.stages[-1]), input_shape=full.input_shape)
    x, y = random_data(n, model.input_shape, key=5, dtype=dtype)
    return model, init_params(model, x, dtype=dtype), (x, y)


def literal_forward(params, x, n_stats=None):
    """The block outputs [x, out_1, ..., out_9] and the logits, written out. Every BN normalises
    with the mean and variance of the first `n_stats` examples of its input (default: all, the
    search mode; fewer: inference mode with those examples' statistics, as the caching pass)."""

    def bn(z, p):
        ref = z[:n_stats]
        mean, var = ref.mean(axis=(0, 1, 2)), ref.var(axis=(0, 1, 2))
        return (z - mean) / jnp.sqrt(var + 1e-3) * p["scale"] + p["bias"]

    def conv3x3(z, k):
        return jax.lax.conv_general_dilated(z, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def avg_pool(z):
        return z.reshape(z.shape[0], z.shape[1] // 2, 2, z.shape[2] // 2, 2, -1).mean(axis=(2, 4))

    out = [x]
    for i in range(1, 10):
        p = params[f"stages_{i - 1}"]
        z = conv3x3(jax.nn.relu(out[i - 1]) if i > 1 else x, p["Conv_0"]["kernel"])
        if i in (3, 5, 7, 9):
            skip = out[i - 2]
            if i == 5:  # 16 -> 32 channels: a 1x1 conv and its BN
                skip = bn(skip @ p["shortcut_conv"]["kernel"][0, 0], p["shortcut_bn"])
            z = z + skip
        if i in (3, 5):
            z = avg_pool(z)
        out.append(bn(z, p["BatchNorm_0"]))
    logits = out[9].max(axis=(1, 2)) @ params["stages_9"]["Dense_0"]["kernel"]
    return out, logits


def stage_input(out, d):
    """The input of stage d (block d + 1; d = 9 the head) from the literal block outputs."""
    return (out[d], out[d - 1]) if d in SKIP_STAGES else out[d]


def assert_trees_close(a, b, atol=1e-12, msg=""):
    assert jax.tree.structure(a) == jax.tree.structure(b), msg
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=0, atol=atol, err_msg=msg)


def test_network_size_order_and_shapes():
    model = rsojax.cifar10_resnet()
    params = jax.eval_shape(lambda: rsojax.init_params(model))
    assert isinstance(model, rsojax.Sequential) and model.global_pool == "max"
    assert sum(a.size for a in jax.tree.leaves(params)) == 57_104
    order = model.search_order()
    assert sorted(order) == sorted(model.layer_paths()) and len(set(order)) == len(order) == 31
    assert order[:4] == ["stages_9/Dense_0/kernel", "stages_8/Conv_0/kernel", "stages_8/BatchNorm_0/bias",
                         "stages_8/BatchNorm_0/scale"]
    at = order.index("stages_4/Conv_0/kernel")
    assert order[at : at + 6] == [f"stages_4/{leaf}" for leaf in ("Conv_0/kernel", "BatchNorm_0/bias", "BatchNorm_0/scale",
                                                                  "shortcut_conv/kernel", "shortcut_bn/bias", "shortcut_bn/scale")]
    assert order[-3:] == ["stages_0/Conv_0/kernel", "stages_0/BatchNorm_0/bias", "stages_0/BatchNorm_0/scale"]
    shapes = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, stop=4), params, jnp.zeros((1, 32, 32, 3)))
    assert [s.shape for s in shapes] == [(1, 16, 16, 32), (1, 16, 16, 16)]  # block 5's input: (out_4, out_3)


def test_forward_written_out_and_composes_from_any_stage():
    """In search mode, the network run from the literal (h, skip) pytree at any stage boundary
    gives the literal logits; in inference mode, with the statistics of the first images, the
    logits (the boundaries in inference mode: `test_caching_pass_caches_the_pytree_stage_inputs`)."""
    model, params, (x, _) = small_resnet(n=12)
    out, logits = literal_forward(params, x)
    for d in range(10):
        assert_trees_close(model.apply({"params": params}, stage_input(out, d), start=d), logits, msg=f"from stage {d}")
    stats = rsojax.bn_statistics(model, params, x[:8])
    assert_trees_close(model.apply({"params": params, "batch_stats": stats}, x, train=False), literal_forward(params, x, 8)[1])
    # The shortcut's BN beta adds a constant per channel just before block 5's BN, which removes
    # it: RSO's search of these 2 x `channels` parameters is decided by rounding alone.
    shifted = jax.tree.map(lambda a: a, params)
    shifted["stages_4"]["shortcut_bn"]["bias"] = params["stages_4"]["shortcut_bn"]["bias"] + 1.0
    np.testing.assert_allclose(literal_forward(shifted, x)[1], logits, rtol=0, atol=1e-12)
    assert out[3].shape == (12, 16, 16, 2) and out[5].shape == (12, 8, 8, 4) and out[9].shape == (12, 8, 8, 4)


def test_caching_pass_caches_the_pytree_stage_inputs():
    """The cached input of every stage is the literal network in inference mode with the BN
    statistics of the first `stats_images` training images, (h, skip) where a block adds one,
    each array once."""
    model, params, (x, y) = small_resnet(n=20)
    inputs = stage_inputs(model, params, (x, y), 9, cache_batch=8, stats_images=12)
    out, _ = literal_forward(params, x, n_stats=12)
    every = jnp.arange(x.shape[0])
    for d in range(10):
        assert_trees_close(batch_major(inputs.h_S[d], every), stage_input(out, d), atol=1e-10, msg=f"stage {d}")
    for d in SKIP_STAGES:  # the skip is the input of the stage before, passed on: stored once
        assert inputs.h_S[d][1] is inputs.h_S[d - 1]


def test_registry_and_incremental_on_the_residual_network():
    """Every evaluator applies; Incremental's own path runs every block's parameters; the head it
    evaluates as Cached does."""
    model, params, data = small_resnet(n=8)
    assert applicable(model) == ["incremental", "cached", "generic"]
    assert isinstance(default_evaluator(model), rsojax.Incremental)
    assert isinstance(EVALUATORS["generic"](model), rsojax.Uncached)
    incremental = rsojax.Incremental(model)
    for path in ("stages_0/Conv_0/kernel", "stages_1/Conv_0/kernel", "stages_4/BatchNorm_0/bias",
                 "stages_4/shortcut_conv/kernel", "stages_4/shortcut_bn/scale"):
        assert isinstance(incremental.prepare(params, path, data), ConvContext), path
    assert type(incremental.prepare(params, "stages_9/Dense_0/kernel", data)) is StageInputs


def test_incremental_losses_are_cached_losses_on_every_path():
    """The three candidate losses themselves, not only the decisions they lead to (a wrong term
    can leave every decision of a small search unchanged), for weights of every path."""
    model, params, data = small_resnet(n=16)
    cached, incremental = rsojax.Cached(model), rsojax.Incremental(model)
    idx_B = jnp.arange(8, 16)

    @functools.partial(jax.jit, static_argnames="path")
    def both(ctx_c, ctx_i, j, values_3, path):
        expected = cached.losses(ctx_c, params, path, j, values_3, idx_B)
        return expected, incremental.losses(incremental.refresh(ctx_i, params, path, j), params, path, j, values_3, idx_B)

    for path in LAYERS[1:]:
        leaf = rsojax.get_leaf(params, path)
        ctx_c, ctx_i = cached.prepare(params, path, data), incremental.prepare(params, path, data)
        for j in sorted({0, leaf.size // 2 + 1, leaf.size - 1}):
            values_3 = leaf.ravel()[j] + jnp.array([0.0, 0.4, -0.4])
            expected, got = both(ctx_c, ctx_i, jnp.int32(j), values_3, path)
            assert np.ptp(np.asarray(expected)) > 1e-6, (path, j)  # the candidates differ
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=0, err_msg=f"{path} weight {j}")


def cycle_rso(model, kind, batch_size, **config):
    """An RSO of the evaluator `kind` over `CYCLE_LAYERS`."""
    return rsojax.RSO(EVALUATORS[kind](model), CYCLE_LAYERS, rsojax.RSOConfig(batch_size=batch_size, **config))


@pytest.fixture(scope="module")
def reference_cycle():
    """A cycle of `small_resnet(blocks=7)` over `CYCLE_LAYERS` by the float64 literal reference, layer after
    layer from its own parameters: the stages before the searched one in inference mode with the
    first images' statistics, one shuffle per block (the shortcut conv takes block 5's)."""
    model, params, data = small_resnet(blocks=7)
    rso = cycle_rso(model, "generic", 8, cycles=3)
    start = rso.init(params, jax.random.key(72), data).replace(cycle=jnp.int32(1))
    state, leaves, choices, losses = start, {}, {}, {}
    for path in rso.layers:
        d = stage_of(path)
        losses[d] = losses.get(d) or reference_loss(model, path, data[0])  # one compilation per stage
        leaves[path], choices[path] = reference_sweep(losses[d], rso, state, data, path)
        state = state.replace(params=rsojax.set_leaf(state.params, path, jnp.asarray(leaves[path])))
    return model, data, start, leaves, choices


@pytest.mark.parametrize("kind", list(EVALUATORS))
def test_float64_cycle_matches_the_literal_reference(kind, reference_cycle):
    """`RSO.cycle` as a run calls it, every layer in one compiled sweep: each layer's parameters
    equal the reference's to 1e-10 (a different decision moves a weight by a whole dw), and it
    accepts as many perturbations."""
    model, data, start, leaves, choices = reference_cycle
    rso = cycle_rso(model, kind, 8, cycles=3)
    state, results = rso.cycle(start, data)
    assert [path for path, _ in results] == list(CYCLE_LAYERS)
    for path, metrics in results:
        np.testing.assert_allclose(rsojax.get_leaf(state.params, path), leaves[path], rtol=0, atol=1e-10, err_msg=path)
        assert int(metrics.accepted) == sum(c != 0 for c in choices[path]), path
    assert {0, 1, 2} <= {c for path in rso.layers for c in choices[path]}


def test_float32_evaluators_agree():
    """Over a float32 cycle of `small_resnet(blocks=7)` (`CYCLE_LAYERS`), from the same state
    and draws, every evaluator takes the decision of `Uncached` (which recomputes the stages
    before the searched one from the images) on at least 99.9% of the weights; the state follows
    its choice."""
    model, params, data = small_resnet(n=32, dtype=jnp.float32, blocks=7)
    evaluators = [EVALUATORS[name](model) for name in EVALUATORS]
    rso = cycle_rso(model, "generic", 16, cycles=2)
    state = rso.init(params, jax.random.key(11), data)
    cfg = rso.config

    @functools.partial(jax.jit, static_argnames="path")
    def decide(params, ctxs, perm_N, layer_key, sigma, i, path):
        leaf = rsojax.get_leaf(params, path)
        j = jnp.asarray(rsojax.weight_order(leaf.shape))[i]
        dw = sigma * jax.random.normal(jax.random.fold_in(layer_key, i), (), leaf.dtype)
        w = leaf.ravel()[j] * (1 - cfg.weight_decay)
        values_3 = jnp.stack([w, w + dw, w - dw])
        idx_B = batch_at(perm_N, i, cfg.batch_size)
        ctxs = [e.refresh(c, params, path, j) for e, c in zip(evaluators, ctxs)]
        choices = jnp.stack([choose(e.losses(c, params, path, j, values_3, idx_B)) for e, c in zip(evaluators, ctxs)])
        params = rsojax.set_leaf(params, path, leaf.ravel().at[j].set(values_3[choices[-1]]).reshape(leaf.shape))
        return params, ctxs, choices

    params, choices, ctxs = state.params, [], [None] * len(evaluators)
    for layer, path in enumerate(rso.layers):
        sigma = state.sigmas[path] * anneal(state.cycle, cfg.cycles, cfg.anneal_floor).astype(jnp.float32)
        layer_key = jax.random.fold_in(jax.random.fold_in(state.key, state.cycle), layer)
        perm_N = block_permutation(state.data_key, state.cycle, rso.blocks[layer], state.n_examples)
        ctxs = [e.prepare(params, path, data, c) for e, c in zip(evaluators, ctxs)]
        for i in range(rsojax.get_leaf(params, path).size):
            params, ctxs, c = decide(params, ctxs, perm_N, layer_key, sigma, i, path)
            choices.append(np.asarray(c))
    choices = np.array(choices)
    assert len(choices) == sum(rsojax.get_leaf(params, p).size for p in CYCLE_LAYERS) and len(set(choices[:, -1])) == 3
    agree = (choices == choices[:, -1:]).all(axis=1)
    assert agree.sum() >= 0.999 * len(agree), (agree.sum(), len(agree))
