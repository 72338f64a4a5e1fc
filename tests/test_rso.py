"""The engine against a slow, literal reference in float64, and its guarantees."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_data

import rsojax
from rsojax.layer_order import get_leaf
from rsojax.models import Sequential, stage_of
from rsojax.rso import choose
from rsojax.schedule import anneal


@jax.jit
def unit_normal(layer_key, i):
    return jax.random.normal(jax.random.fold_in(layer_key, i), (), jnp.float64)


def literal_positions(shape, output_first=True):
    """Visit order written out as the reference code's nested loops."""
    if len(shape) == 4:  # conv HWIO: output channel, input channel, row, column
        h, w, cin, cout = shape
        if not output_first:
            return [(a, b, i, o) for i in range(cin) for o in range(cout) for a in range(h) for b in range(w)]
        return [(a, b, i, o) for o in range(cout) for i in range(cin) for a in range(h) for b in range(w)]
    if len(shape) == 2:  # dense (in, out): per output neuron, then inputs
        if not output_first:
            return [(i, o) for i in range(shape[0]) for o in range(shape[1])]
        return [(i, o) for o in range(shape[1]) for i in range(shape[0])]
    return [(c,) for c in range(shape[0])]


def reference_loss(model, path, x_train, stats_images=2000):
    """The reference code's loss while `path` is searched, written out: the stages before the
    searched one in inference mode with BN statistics of the first `stats_images` training
    images (its caching pass), the rest with the batch's statistics; log-softmax and the summed
    cross-entropy in float64. Any model without BN (an MLP) is plain batch mode throughout."""
    d = stage_of(path) if isinstance(model, Sequential) else 0

    @jax.jit
    def loss(params, batch):
        x, y = batch
        _, stats = model.apply({"params": params}, x_train[:stats_images], train=True, mutable=["batch_stats"])
        h = model.apply({"params": params, **stats}, x, train=False, stop=d) if d else x
        logits = model.apply({"params": params}, h, train=True, **({"start": d} if d else {}))
        return -jnp.sum(jax.nn.log_softmax(logits.astype(jnp.float64))[jnp.arange(y.shape[0]), y])

    return loss


def reference_batches(rso, state, path, n_positions):
    """The reference code's stream: one shuffle of the training set per block (layers sharing
    their first path component) and cycle, cut into N // B fixed batches; position i takes
    batch i mod (N // B)."""
    names = [p.split("/")[0] for p in rso.layers]
    block = names.index(path.split("/")[0])
    key = jax.random.fold_in(jax.random.fold_in(state.data_key, state.cycle), block)
    perm = np.asarray(jax.random.permutation(key, state.n_examples))
    b = rso.config.batch_size
    cut = [perm[k * b : (k + 1) * b] for k in range(state.n_examples // b)]
    return [cut[i % len(cut)] for i in range(n_positions)]


def reference_sweep(loss_fn, rso, state, data, path, unit=unit_normal, threads=None):
    """Algorithm 1 for one layer with Python loops and float64 numpy; same draws as the engine.

    `unit(layer_key, i)` is the unit draw of dw at visit position i. `threads`: lists of visit
    positions, each run from the layer's starting point, then merged (the parallel schemes);
    default: one thread of every position in order.

    Returns the final leaf and the chosen candidate per visited weight, in visit order (0: w',
    1: w'+dw, 2: w'-dw, -1: unchanged because no loss was finite).
    """
    cfg = rso.config
    x, y = (np.asarray(a) for a in data)  # host arrays: each minibatch is a NumPy gather
    params = state.params
    leaf = np.array(rsojax.get_leaf(params, path), dtype=np.float64)
    sigma = float(state.sigmas[path]) * float(anneal(state.cycle, cfg.cycles, cfg.anneal_floor))
    layer_key = jax.random.fold_in(jax.random.fold_in(state.key, state.cycle), rso.layers.index(path))
    loss_fn = jax.jit(loss_fn)
    positions = literal_positions(leaf.shape, cfg.output_first)
    batches = reference_batches(rso, state, path, len(positions))
    merged, choices = leaf.copy(), {}
    for thread in threads or [range(len(positions))]:
        current = leaf.copy()
        for i in thread:
            pos, idx = positions[i], batches[i]
            dw = sigma * float(unit(layer_key, i))
            w = current[pos] * (1 - cfg.weight_decay)
            candidates = [w, w + dw, w - dw]
            losses = []
            for value in candidates:
                trial = current.copy()
                trial[pos] = value
                losses.append(float(loss_fn(rsojax.set_leaf(params, path, jnp.asarray(trial)), (x[idx], y[idx]))))
            finite = [k for k in range(3) if math.isfinite(losses[k])]
            best = min(finite, key=lambda k: (losses[k], k)) if finite else -1
            if best >= 0:
                current[pos] = candidates[best]
            choices[i] = best
            merged[pos] = current[pos]
    return merged, [choices[i] for i in sorted(choices)]


def engine_choices(rso, state, data, path):
    """Runs the compiled sweep one weight per chunk (each prepared for its own state, as
    `RSO.chunks` does) and reads off each decision."""
    order = rsojax.weight_order(rsojax.get_leaf(state.params, path).shape)
    choices, ctx = [], None
    for i in range(len(order)):
        ctx = rso.prepare(state, data, path, previous=ctx)
        before = rsojax.get_leaf(state.params, path).ravel()[order[i]]
        state, m, ctx = rso.sweep(state, ctx, path, i, i + 1)
        after = rsojax.get_leaf(state.params, path).ravel()[order[i]]
        if int(m.nonfinite):
            choices.append(-1)
        elif not int(m.accepted):
            choices.append(0)
        else:  # w'+dw or w'-dw: tell them apart by the side of w' the new value lies on
            decayed = before * (1 - rso.config.weight_decay)
            sigma_sign = 1 if after > decayed else -1
            choices.append(1 if sigma_sign == dw_sign(rso, state, path, i) else 2)
    return state, choices


def dw_sign(rso, state, path, i):
    layer_key = jax.random.fold_in(jax.random.fold_in(state.key, state.cycle), rso.layers.index(path))
    return 1 if float(unit_normal(layer_key, i)) > 0 else -1


def make_rso(model, evaluator_kind, batch_size, kernels_only=False, **config):
    evaluator = rsojax.EVALUATORS[evaluator_kind](model)
    return rsojax.RSO(evaluator, model.search_order(kernels_only), rsojax.RSOConfig(batch_size=batch_size, **config))


@pytest.mark.parametrize(
    "model_name, evaluator_kind, paths",
    [
        ("mlp", "generic", ["stages_1/Dense_0/kernel", "stages_1/Dense_0/bias", "stages_0/Dense_0/kernel"]),
        ("mlp", "cached", ["stages_1/Dense_0/kernel", "stages_0/Dense_0/bias"]),
        *[
            # The head, a conv kernel and its BN beta (the same block: the same batches from
            # batch 0 again), a pooled stage and stage 0: the stages before in inference mode.
            ("convnet", kind, ["stages_6/Dense_0/kernel", "stages_3/Conv_0/kernel", "stages_3/BatchNorm_0/bias",
                               "stages_0/BatchNorm_0/scale"])
            for kind in ("generic", "cached", "incremental")
        ],
    ],
)
def test_sweep_matches_literal_reference(model_name, evaluator_kind, paths, small_mlp, small_convnet):
    model, params, data = small_mlp if model_name == "mlp" else small_convnet
    rso = make_rso(model, evaluator_kind, 8, cycles=3)
    state = rso.init(params, jax.random.key(72), data)
    state = state.replace(cycle=jnp.int32(1))
    seen = set()
    for path in paths:
        expected_leaf, expected = reference_sweep(reference_loss(model, path, data[0]), rso, state, data, path)
        state, choices = engine_choices(rso, state, data, path)
        assert choices == expected, path
        np.testing.assert_allclose(rsojax.get_leaf(state.params, path), expected_leaf, rtol=0, atol=1e-10)
        seen |= set(choices)
    assert {1, 2} <= seen  # both perturbations were taken somewhere (ties to w' are tested below)


def test_metrics_are_the_losses_of_the_kept_values(small_convnet):
    """Each weight's `loss_before` is the literal float64 loss at w' = w * (1 - weight_decay)
    and its `loss_after` the literal loss of the parameters the sweep kept, both on the
    weight's own batch; only the searched layer changes."""
    model, params, data = small_convnet
    rso = make_rso(model, "cached", 16)
    state = rso.init(params, jax.random.key(2), data)
    path = "stages_3/Conv_0/kernel"
    loss = reference_loss(model, path, data[0])
    positions = literal_positions(rsojax.get_leaf(params, path).shape)
    batches = reference_batches(rso, state, path, len(positions))
    ctx = rso.prepare(state, data, path)  # Cached: valid for every weight of the layer
    accepted = 0
    for i, (pos, idx) in enumerate(zip(positions, batches)):
        batch = (data[0][idx], data[1][idx])
        leaf = rsojax.get_leaf(state.params, path)
        decayed = rsojax.set_leaf(state.params, path, leaf.at[pos].multiply(1 - rso.config.weight_decay))
        state, m, ctx = rso.sweep(state, ctx, path, i, i + 1)
        assert float(m.loss_before) == pytest.approx(float(loss(decayed, batch)), rel=1e-10), i
        assert float(m.loss_after) == pytest.approx(float(loss(state.params, batch)), rel=1e-10), i
        accepted += int(m.accepted)
    assert accepted > 0  # some weights moved: loss_after is not always loss_before
    changed = {p: not np.array_equal(rsojax.get_leaf(state.params, p), rsojax.get_leaf(params, p)) for p in model.layer_paths()}
    assert changed.pop(path)
    assert not any(changed.values())
    flat_new, flat_old = jax.tree.leaves(state.params), jax.tree.leaves(params)
    assert sum(not np.array_equal(a, b) for a, b in zip(flat_new, flat_old)) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_layer_draws_are_the_bits_a_loop_over_the_weights_draws(dtype):
    """A layer's perturbations, computed for all its positions at once apart from its sweeps
    (`RSO.layer_draws`), equal bit for bit sigma times each position's unit draw computed in a
    loop over the weights, for every perturbation, one run and each of several runs, over a
    layer of 20,000 weights."""
    model = rsojax.mlp(hidden=(200,), input_shape=(100,))
    x, y = random_data(16, model.input_shape)
    params = jax.tree.map(lambda a: a.astype(dtype), model.init(jax.random.key(0), x[:2])["params"])
    path = "stages_0/Dense_0/kernel"

    @functools.partial(jax.jit, static_argnames=("kind", "n"))
    def loop(key, cycle, layer, kind, n):
        layer_key = jax.random.fold_in(jax.random.fold_in(key, cycle), layer)

        def body(i, out):
            return out.at[i].set(rsojax.rso.PERTURBATIONS[kind](jax.random.fold_in(layer_key, i), dtype))

        return jax.lax.fori_loop(0, n, body, jnp.zeros(n, dtype))

    keys = jnp.stack([jax.random.key(s) for s in (5, 6)])
    for kind in rsojax.rso.PERTURBATIONS:
        rso = make_rso(model, "generic", 8, perturbation=kind)
        layer = rso.layers.index(path)
        one = rso.init(params, jax.random.key(4), (x, y)).replace(cycle=jnp.int32(2))
        sigma = np.asarray(rso.sigma(one, path))
        assert sigma.dtype == dtype and 0 < sigma < 1
        alone = sigma * np.asarray(loop(one.key, one.cycle, layer, kind, 20_000))  # one rounding each
        np.testing.assert_array_equal(rso.layer_draws(one, path).dw_P, alone)
        runs = rso.init_runs(jax.tree.map(lambda a: jnp.stack([a, a]), params), keys, (x, y))
        dw_RP, sigma_R = rso.layer_draws(runs, path).dw_P, np.asarray(rso.sigma(runs, path))
        for k in range(2):
            alone = sigma_R[k] * np.asarray(loop(runs.key[k], runs.cycle[k], layer, kind, 20_000))
            np.testing.assert_array_equal(dw_RP[k], alone, err_msg=f"{kind} run {k}")


@pytest.mark.parametrize("evaluator", ["generic", "incremental"])
def test_kept_values_are_w_plus_or_minus_dw_rounded_twice(small_convnet, evaluator):
    """Every weight a float32 sweep changes becomes w' + dw or w' - dw, with dw `draws`' rounded
    product of sigma and the unit draw and each sum rounded once more, as the reference computes
    them: never sigma times the unit draw plus w' in one fused multiply-add, which XLA makes
    where it fuses the product into the sums (a product inside the sweep fails this)."""
    model, params, data = small_convnet
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    data = (data[0].astype(jnp.float32), data[1])
    rso = make_rso(model, evaluator, 8)
    state = rso.init(params, jax.random.key(3), data)
    changed = 0
    for path in ("stages_6/Dense_0/kernel", "stages_2/Conv_0/kernel"):
        n = min(40, rso.n_weights(state, path))
        after, _, _ = rso.sweep(state, rso.prepare(state, data, path), path, 0, n)
        order, dw, _ = rso.draws(state, path)
        w0 = np.asarray(get_leaf(state.params, path)).ravel()
        w1 = np.asarray(get_leaf(after.params, path)).ravel()
        keep = np.float32(rso.weight_keep(state))
        for i in range(n):
            j, d, centre = int(order[i]), np.float32(dw(i)), w0[int(order[i])] * keep
            assert w1[j] in (centre, centre + d, centre - d), (path, i)
            changed += w1[j] != w0[j]
    assert changed >= 20  # enough kept candidates that a fused multiply-add would show


def test_same_key_same_result_different_key_different(small_mlp):
    model, params, data = small_mlp
    rso = make_rso(model, "generic", 8)

    def run(seed):
        state, _ = rso.cycle(rso.init(params, jax.random.key(seed), data), data)
        return jax.tree.leaves(state.params)

    for a, b in zip(run(3), run(3)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(run(3), run(4)))


def test_chunked_sweep_equals_whole_sweep(small_mlp):
    model, params, data = small_mlp
    rso = make_rso(model, "cached", 8)
    state = rso.init(params, jax.random.key(9), data)
    whole, m_whole = rso.cycle(state, data)
    chunked, m_chunked = rso.cycle(state, data, chunk_size=5)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(chunked.params)):
        np.testing.assert_array_equal(a, b)
    assert [int(m.accepted) for _, m in m_whole] == [int(m.accepted) for _, m in m_chunked]


@pytest.mark.parametrize("runs", [None, 2])
def test_a_sweep_goes_on_from_the_context_it_returns(small_convnet, runs):
    """`Incremental`'s P and pending pair, which `refresh` updates, are donated to the sweep
    and come back in the context it returns: sweeping a conv layer in three calls, each going
    on from the last one's context (breaks inside a channel pair), gives the bits of one call,
    parameters and P (a sweep that returned its input's P or pair, without the folds since,
    fails this), and the context given is used up (a sweep that copied it would not be): a
    sweep given it again says so."""
    model, params, data = small_convnet
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    data = (data[0].astype(jnp.float32), data[1])
    path = "stages_1/Conv_0/kernel"
    rso = make_rso(model, "incremental", 8)
    if runs is None:
        state = rso.init(params, jax.random.key(4), data)
    else:
        stacked = jax.tree.map(lambda a: jnp.stack([a, a * 0.5]), params)
        state = rso.init_runs(stacked, jnp.stack([jax.random.key(4), jax.random.key(5)]), data)
    n = rso.n_weights(state, path)
    whole, m_whole, ctx_whole = rso.sweep(state, rso.prepare(state, data, path), path)
    parts, ctx, accepted = state, rso.prepare(state, data, path), 0
    for start, stop in ((0, 5), (5, 23), (23, n)):
        given = ctx
        parts, m, ctx = rso.sweep(parts, ctx, path, start, stop)
        accepted = accepted + m.accepted
        p_given = given.ctx().p_OxNxHxW if runs else given.p_OxNxHxW
        assert p_given.is_deleted()
    with pytest.raises(ValueError, match="ctx: an earlier sweep used this context up"):
        rso.sweep(parts, given, path, 0, 1)
    np.testing.assert_array_equal(get_leaf(parts.params, path), get_leaf(whole.params, path))
    np.testing.assert_array_equal(accepted, m_whole.accepted)
    assert np.all(np.asarray(m_whole.accepted) > 0)  # the folds change P: not vacuous
    final, final_whole = (c.ctx() if runs else c for c in (ctx, ctx_whole))
    np.testing.assert_array_equal(final.p_OxNxHxW, final_whole.p_OxNxHxW)
    np.testing.assert_array_equal(final.pair, final_whole.pair)


def test_equal_trainers_share_their_compiled_sweeps(small_mlp):
    """An `RSO` built again with the same evaluator, layers, config and mesh (a notebook cell run
    again, the same trainer per run) equals the first, and its sweep is neither traced nor
    compiled again; one that differs in its config or evaluator is another trainer. An evaluator
    that cannot be hashed gets sweeps of its own."""
    model, params, data = small_mlp
    first, again = make_rso(model, "cached", 8), make_rso(model, "cached", 8)
    assert first == again and hash(first) == hash(again)
    assert first != make_rso(model, "cached", 10) and first != make_rso(model, "generic", 8)
    state = first.init(params, jax.random.key(5), data)
    path = first.layers[0]
    expected, _, _ = first.sweep(state, first.prepare(state, data, path), path)
    ctx = again.prepare(state, data, path)
    events = []

    def listen(event, seconds, **kwargs):
        events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        got, _, _ = again.sweep(state, ctx, path)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert [e for e in events if e.startswith("/jax/core/compile/")] == []
    np.testing.assert_array_equal(rsojax.get_leaf(got.params, path), rsojax.get_leaf(expected.params, path))

    class Unhashable(rsojax.Cached):  # an evaluator that cannot be a cache key: sweeps of its own
        __hash__ = None

    alone = rsojax.RSO(Unhashable(model), first.layers, first.config)
    got, _, _ = alone.sweep(state, alone.prepare(state, data, path), path)
    np.testing.assert_array_equal(rsojax.get_leaf(got.params, path), rsojax.get_leaf(expected.params, path))


def test_kernels_only_leaves_batchnorm_untouched(small_convnet):
    model, params, data = small_convnet
    rso = make_rso(model, "cached", 16, kernels_only=True)
    state, _ = rso.cycle(rso.init(params, jax.random.key(0), data), data)
    for path in model.layer_paths():
        same = np.array_equal(rsojax.get_leaf(state.params, path), rsojax.get_leaf(params, path))
        assert same == ("BatchNorm" in path), path
    assert int(state.cycle) == 1


def test_weight_decay_alone_is_the_kept_candidate():
    # With a loss that does not depend on the weight, every tie goes to w' = w * (1 - wd).
    params = {"layer": {"kernel": jnp.full((3, 2), 2.0)}}
    x, y = random_data(10, (3,))
    rso = rsojax.RSO(
        rsojax.Generic(lambda p, b: jnp.sum(b[0]) * 0.0), ["layer/kernel"], rsojax.RSOConfig(batch_size=4, weight_decay=0.5)
    )
    state, (( _, m),) = rso.cycle(rso.init(params, jax.random.key(0), (x, y)), (x, y))
    np.testing.assert_array_equal(state.params["layer"]["kernel"], jnp.full((3, 2), 1.0))
    assert int(m.accepted) == 0


def test_choose_never_takes_a_nonfinite_loss():
    assert int(choose(jnp.array([1.0, jnp.nan, 0.5]))) == 2
    assert int(choose(jnp.array([jnp.nan, 3.0, 2.0]))) == 2
    assert int(choose(jnp.array([2.0, -jnp.inf, jnp.inf]))) == 0
    assert int(choose(jnp.array([1.0, 1.0, 1.0]))) == 0
    assert int(choose(jnp.array([jnp.nan, jnp.inf, jnp.nan]))) == -1


def test_planted_nan_candidate_is_never_accepted():
    # The loss is NaN whenever the weight rises above its start and far lower otherwise: a
    # plain argmin would take the NaN (jnp.argmin returns the index of a NaN).
    params = {"layer": {"kernel": jnp.zeros((4, 3))}}
    x, y = random_data(10, (3,))

    def loss(p, batch):
        k = p["layer"]["kernel"]
        return jnp.where(jnp.any(k > 0), jnp.nan, -jnp.sum(jnp.abs(k))) + 0.0 * jnp.sum(batch[0])

    rso = rsojax.RSO(rsojax.Generic(loss), ["layer/kernel"], rsojax.RSOConfig(batch_size=4, weight_decay=0.0))
    state, ((_, m),) = rso.cycle(rso.init(params, jax.random.key(0), (x, y)), (x, y))
    assert float(jnp.max(state.params["layer"]["kernel"])) <= 0.0
    assert int(m.accepted) == 12  # every weight moved down: the w'-dw candidate each time

    always_nan = rsojax.RSO(rsojax.Generic(lambda p, b: jnp.nan * jnp.sum(p["layer"]["kernel"])), ["layer/kernel"],
                            rsojax.RSOConfig(batch_size=4))
    params = {"layer": {"kernel": jnp.ones((4, 3))}}
    state, ((_, m),) = always_nan.cycle(always_nan.init(params, jax.random.key(0), (x, y)), (x, y))
    np.testing.assert_array_equal(state.params["layer"]["kernel"], params["layer"]["kernel"])
    assert int(m.nonfinite) == 12 and int(m.accepted) == 0


def test_bad_input_raises_with_the_argument_named(small_convnet):
    model, params, (x, y) = small_convnet
    rso = make_rso(model, "cached", 8)
    with pytest.raises(ValueError, match="data: x has 48 examples but y has 47"):
        rso.init(params, jax.random.key(0), (x, y[:-1]))
    with pytest.raises(ValueError, match=r"batch_size: 100 is larger than the training set \(48"):
        make_rso(model, "cached", 100).init(params, jax.random.key(0), (x, y))
    with pytest.raises(ValueError, match=r"data: x must have shape \(N, 28, 28, 1\) \(rank 4\)"):
        rso.init(params, jax.random.key(0), (x[..., 0], y))
    int_params = jax.tree.map(lambda a: a.astype(jnp.int32), params)
    with pytest.raises(TypeError, match="params: layer 'stages_6/Dense_0/kernel' has dtype int32"):
        rso.init(int_params, jax.random.key(0), (x, y))
    with pytest.raises(ValueError, match="layers: the list of layers to search is empty"):
        rsojax.RSO(rsojax.Cached(model), [])
    with pytest.raises(ValueError, match="layers: unknown layer 'stages_9/Conv_0/kernel'"):
        rsojax.RSO(rsojax.Cached(model), ["stages_9/Conv_0/kernel"]).init(params, jax.random.key(0), (x, y))
    with pytest.raises(ValueError, match="data: y must be a vector of integer labels"):
        rso.init(params, jax.random.key(0), (x, y.astype(jnp.float32)))
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        rsojax.RSOConfig(batch_size=0)
    with pytest.raises(ValueError, match="anneal_floor"):
        rsojax.RSOConfig(anneal_floor=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        rsojax.RSOConfig(weight_decay=1.0)


def test_float32_state_stays_float32(small_mlp):
    model, params, (x, y) = small_mlp
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    data = (x.astype(jnp.float32), y)
    rso = make_rso(model, "cached", 8)
    state, metrics = rso.cycle(rso.init(params, jax.random.key(5), data), data)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.params))
    assert all(m.loss_before.dtype == m.loss_after.dtype == jnp.float32 for _, m in metrics)
