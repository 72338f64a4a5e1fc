"""Several runs in one compiled program (`RSO.init_runs`): run k decides as it would alone.

The single run is checked against literal references elsewhere (`test_rso.py`,
`test_evaluators.py`); here each run of a K-run program is compared with that single run."""

import contextlib
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_data, runs_batched_as_on_gpus

import rsojax
from rsojax.rso import candidate_values

SEEDS = (5, 6)
# The swept values are each run's own; one of each is rounded differently when the complement
# (1 - value) is taken in float32 rather than exactly (0.33 and 0.008791), which the runs'
# traced constants must not do.
SWEEP = {"sigma_scale": (2.0, 0.5), "vector_sigma": (0.167, 0.3), "anneal_floor": (0.1, 0.33), "weight_decay": (1e-4, 0.008791)}
# The head (evaluated as Cached does); a conv with a conv stage next and its BN (whose P is
# reused from the conv's context); stage 0's conv, whose input is the training set itself.
LAYERS = ["stages_6/Dense_0/kernel", "stages_4/Conv_0/kernel", "stages_4/BatchNorm_0/scale", "stages_0/Conv_0/kernel"]


def problem(dtype=jnp.float64):
    model = rsojax.mnist_convnet(channels=3)
    x, y = random_data(48, model.input_shape, key=4, dtype=dtype)
    return model, (x, y), [init_params(model, x, seed=s, dtype=dtype) for s in SEEDS]


def stacked(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def keys():
    return jnp.stack([jax.random.key(s) for s in SEEDS])


def alone(rso, k):
    """The RSO of run k alone: the config with the k-th swept values."""
    config = dataclasses.replace(rso.config, **{name: values[k] for name, values in SWEEP.items()})
    return rsojax.RSO(rso.evaluator, rso.layers, config)


@pytest.mark.parametrize(
    "evaluator, granularity",
    [("incremental", "weight"), ("cached", "neuron")],
)
def test_each_run_takes_the_decisions_it_takes_alone(evaluator, granularity):
    """float64: every weight of every run gets the single run's value after a cycle in chunks
    (so each chunk's context is prepared from the runs' own state), with the runs computed
    one at a time (as on CPUs) and, for Incremental, batched (as on GPUs and TPUs). Up to
    rounding: XLA may contract w' + dw into one fused multiply-add in one program and not in
    the other; a different decision would move the weight by a whole dw."""
    model, data, params = problem()
    # One single-run program serves both runs (they differ in their seeds); the swept
    # hyperparameters reach each run as `test_runs_use_the_constants_a_single_run_compiles` and
    # tests/test_experiment_runs.py check.
    layers = LAYERS if evaluator == "incremental" else LAYERS[:2]
    config = rsojax.RSOConfig(batch_size=16, cycles=3, granularity=granularity)
    rso = rsojax.RSO(rsojax.EVALUATORS[evaluator](model), layers, config)
    expected = [rso.cycle(rso.init(params[k], jax.random.key(seed), data), data, chunk_size=40) for k, seed in enumerate(SEEDS)]
    for batched in (False, True) if evaluator == "incremental" else (False,):
        with runs_batched_as_on_gpus() if batched else contextlib.nullcontext():
            runs = rsojax.RSO(rso.evaluator, layers, config)  # its own compiled sweeps
            state = runs.init_runs(stacked(params), keys(), data)
            assert state.runs == len(SEEDS)
            state, metrics = runs.cycle(state, data, chunk_size=40)
        for k, (want_state, want_metrics) in enumerate(expected):
            for path in layers:
                got, want = rsojax.get_leaf(state.params, path)[k], rsojax.get_leaf(want_state.params, path)
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"batched={batched}, run {k}, {path}")
            assert [int(m.accepted[k]) for _, m in metrics] == [int(m.accepted) for _, m in want_metrics]
        assert all(int(m.accepted.min()) > 0 for _, m in metrics)  # every run moved on every layer


def test_runs_use_the_constants_a_single_run_compiles():
    """float32, without x64 (as users run): dw and the candidates of run k are bit for bit the
    single run's, with an anneal floor and a weight decay whose complements (1 - value)
    round differently when taken in float32."""
    with jax.enable_x64(False):
        model, data, params = problem(jnp.float32)
        path = "stages_5/Conv_0/kernel"
        rso = rsojax.RSO(rsojax.Incremental(model), [path], rsojax.RSOConfig(batch_size=16, cycles=3))
        state = rso.init_runs(stacked(params), keys(), data, SWEEP)
        for k, seed in enumerate(SEEDS):
            single = alone(rso, k)
            for cycle in range(3):
                one = single.init(params[k], jax.random.key(seed), data).replace(cycle=jnp.int32(cycle))
                run_k = jax.tree.map(lambda a: a[k], state).replace(cycle=jnp.int32(cycle))
                (_, dw, _), (_, dw_alone, _) = rso.draws(run_k, path), single.draws(one, path)
                w = rsojax.get_leaf(one.params, path).ravel()[:16]
                for i in range(16):
                    got = candidate_values(w[i], dw(i), rso.weight_keep(run_k))
                    want = candidate_values(w[i], dw_alone(i), single.weight_keep(one))
                    assert np.array_equal(got, want), (k, cycle, i, got, want)


def test_incremental_folds_in_a_branch_for_every_run():
    """The pending channel pair is the runs' shared state: the fold over the training set
    stays a conditional under the runs' vmap instead of a select computing it at every weight."""
    model, data, params = problem(jnp.float32)
    path = "stages_1/Conv_0/kernel"
    rso = rsojax.RSO(rsojax.Incremental(model), [path], rsojax.RSOConfig(batch_size=16))
    state = rso.init_runs(stacked(params), keys(), data)
    hlo = rso.lower(state, rso.prepare(state, data, path), path).as_text()
    assert "stablehlo.case" in hlo or "stablehlo.if" in hlo


def test_a_single_runs_state_keeps_the_structure_of_its_checkpoints():
    """A run's checkpoint restores into a template of the same tree structure: the traced
    hyperparameters are part of the tree only where runs differ in them."""
    model, data, params = problem()
    rso = rsojax.RSO(rsojax.Cached(model), LAYERS[:1], rsojax.RSOConfig(batch_size=16))

    def children(state):
        return [path[0].name for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]

    assert set(children(rso.init(params[0], jax.random.key(0), data))) == {"params", "sigmas", "key", "data_key", "cycle"}
    assert "hypers" in children(rso.init_runs(stacked(params), keys(), data, {"weight_decay": (0.0, 1e-3)}))


def test_refusals_name_the_argument():
    model, data, params = problem()
    rso = rsojax.RSO(rsojax.Cached(model), LAYERS[:1], rsojax.RSOConfig(batch_size=16))
    with pytest.raises(ValueError, match="sweep: 'batch_size' cannot differ"):
        rso.init_runs(stacked(params), keys(), data, {"batch_size": (8, 16)})
    with pytest.raises(ValueError, match="sweep: sigma_scale has 3 values for 2 runs"):
        rso.init_runs(stacked(params), keys(), data, {"sigma_scale": (1.0, 2.0, 3.0)})
    with pytest.raises(ValueError, match="sigma_scale: expected a positive number"):
        rso.init_runs(stacked(params), keys(), data, {"sigma_scale": (1.0, -1.0)})
    with pytest.raises(ValueError, match="params: every leaf needs a leading axis of the 1 runs"):
        rso.init_runs(stacked(params), keys()[:1], data)
    with pytest.raises(ValueError, match="keys: expected one PRNG key per run"):
        rso.init_runs(stacked(params), jax.random.key(0), data)

    class OneRunOnly:
        example_shape, parallel_safe = None, True
        prepare = refresh = losses = None

    with pytest.raises(ValueError, match="evaluator: OneRunOnly has no prepare_runs"):
        rsojax.RSO(OneRunOnly(), LAYERS[:1], rso.config).init_runs(stacked(params), keys(), data)


# Runs in a fresh Python with 4 CPU devices: 4 runs on a ('runs', 'data') mesh of 2 x 2 and on
# one device; prints the largest parameter difference and what the compiled sweep holds.
MESH_WORKER = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import rsojax
from rsojax import sharding
from rsojax.models import ConvBlock, PoolHead

model = rsojax.Sequential(stages=(ConvBlock(2), ConvBlock(2, pool=True, relu_in=True), PoolHead(10)), input_shape=(6, 6, 1))
kx, ky = jax.random.split(jax.random.key(0))
x, y = jax.random.normal(kx, (48, 6, 6, 1), jnp.float64), jax.random.randint(ky, (48,), 0, 10)
seeds = (1, 2, 3, 4)
params = jax.tree.map(lambda *a: jnp.stack(a).astype(jnp.float64),
                      *[model.init(jax.random.key(s), x[:2], train=True)["params"] for s in seeds])
keys = jnp.stack([jax.random.key(s) for s in seeds])
out = {}
for name, mesh in (("one", None), ("mesh", sharding.make_mesh(4, runs=2))):
    layers = ["stages_2/Dense_0/kernel", "stages_1/Conv_0/kernel"]
    rso = rsojax.RSO(rsojax.EVALUATORS[sys.argv[1]](model), layers, rsojax.RSOConfig(batch_size=16), mesh=mesh)
    state = rso.init_runs(params, keys, (x, y), {"sigma_scale": (1.0, 0.5, 2.0, 1.5)})
    state, _ = rso.cycle(state, (x, y), chunk_size=12)
    out[name] = [np.asarray(a) for a in jax.tree.leaves(state.params)]
    if mesh is not None:
        path = "stages_1/Conv_0/kernel"
        hlo = rso.lower(state, rso.prepare(state, (x, y), path), path).compile().as_text()
        out["runs_per_device"] = sorted({a.sharding.shard_shape(a.shape)[0] for a in jax.tree.leaves(state.params)})
        out["batch_per_device"] = "s32[2,8]" in hlo  # the batch's indices: 2 runs x half of 16
diff = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) for a, b in zip(out["one"], out["mesh"]))
print(json.dumps({"diff": diff, "runs_per_device": out["runs_per_device"], "batch_per_device": out["batch_per_device"]}))
"""


def test_runs_spread_over_a_runs_mesh_axis_decide_as_on_one_device():
    """4 runs over 2 groups of 2 devices: each device holds 2 runs and half of each batch,
    and every run ends where it ends on one device (up to rounding)."""
    env = os.environ | {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-c", MESH_WORKER, "incremental"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["runs_per_device"] == [2]
    assert result["batch_per_device"]
    assert result["diff"] < 1e-12

