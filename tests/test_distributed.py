"""Data-parallel RSO and SGD over several devices (`rsojax.sharding`).

Each test runs WORKER in a fresh Python with `--xla_force_host_platform_device_count`, so the
CPU offers several devices; the test process itself keeps its one device.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the cases in argv[1] (JSON) and prints one JSON line of results. A case runs once
# without a mesh (one device) and once per entry of "devices".
WORKER = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import optax
import rsojax
from rsojax import sharding
from rsojax.models import ConvBlock, PoolHead
from rsojax.sgd import make_epoch

args = json.loads(sys.argv[1])
if "process_id" in args:
    sharding.distributed_init(args["coordinator"], args["num_processes"], args["process_id"])


def problem(case):
    dtype = jnp.dtype(case["dtype"])
    if case["model"] == "mlp":
        model = rsojax.mlp(hidden=(6,), input_shape=(5,))
    else:  # the MNIST network's blocks, small: conv, conv + pool, BN after each, dense head
        blocks = (ConvBlock(2), ConvBlock(2, pool=True, relu_in=True), PoolHead(10))
        model = rsojax.Sequential(stages=blocks, input_shape=(6, 6, 1))
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (48, *model.input_shape), dtype)
    y = jax.random.randint(ky, (48,), 0, 10)
    params = model.init(jax.random.key(420), x[:2], train=True)["params"]
    return model, jax.tree.map(lambda a: a.astype(dtype), params), (x, y)


def rso_run(case, mesh):
    model, params, data = problem(case)
    evaluator = rsojax.EVALUATORS[case["evaluator"]](model)
    rso = rsojax.RSO(evaluator, case["layers"], rsojax.RSOConfig(batch_size=16, cycles=2), mesh=mesh)
    state = rso.init(params, jax.random.key(72), data)
    accepted = []
    for path in rso.layers:
        ctx = rso.prepare(state, data, path)
        state, m, ctx = rso.sweep(state, ctx, path, 0, min(case["weights"], rso.n_weights(state, path)))
        accepted.append(int(m.accepted))
    out = {"accepted": accepted, "params": [np.asarray(a).ravel().tolist() for a in jax.tree.leaves(state.params)]}
    if case.get("hlo") and mesh is not None and mesh.size == 2:
        path = rso.layers[0]
        ctx = rso.prepare(state, data, path)
        hlo = rso.lower(state, ctx, path, 0, 1).compile().as_text()
        out["all_reduce"] = "all-reduce" in hlo
        out["shards_batch"] = f"[{16 // mesh.size},5]" in hlo
    return out


def sgd_run(case, mesh):
    model, params, (x, y) = problem(case)
    optimizer = optax.sgd(0.05, momentum=0.9)
    epoch = make_epoch(model, optimizer, 16, mesh)
    params, _, loss = epoch(params, optimizer.init(params), jax.random.key(1), x, y)
    return {"loss": float(loss), "params": [np.asarray(a).ravel().tolist() for a in jax.tree.leaves(params)]}


def errors():
    model, _, _ = problem({"model": "mlp", "dtype": "float32"})
    out = {}
    try:
        rsojax.RSO(rsojax.Cached(model), model.search_order(), rsojax.RSOConfig(batch_size=18), mesh=sharding.make_mesh(4))
    except ValueError as e:
        out["rso"] = str(e)
    try:
        make_epoch(model, optax.sgd(0.1), 18, sharding.make_mesh(4))
    except ValueError as e:
        out["sgd"] = str(e)
    return out


results = []
for case in args["cases"]:
    fn = rso_run if case["kind"] == "rso" else sgd_run
    runs = {} if "process_id" in args else {"no mesh": fn(case, None)}
    for n in case["devices"]:
        runs[str(n)] = fn(case, sharding.make_mesh(n))
    results.append(runs)
print(json.dumps({"results": results, "errors": errors() if args.get("errors") else None,
                  "process": jax.process_index(), "describe": sharding.describe(sharding.make_mesh(0))}))
"""


def run_worker(payload: dict, devices: int = 4) -> subprocess.Popen:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"  # conftest's too
    env = dict(os.environ, XLA_FLAGS=flags.strip(), PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(payload)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def assert_same_run(runs: dict, atol: float):
    """Every mesh's run took the decisions of the run without a mesh; parameters within `atol`."""
    reference = runs["no mesh"]
    for n, run in runs.items():
        if "accepted" in run:
            assert run["accepted"] == reference["accepted"], f"mesh of {n} devices"
        for a, b in zip(run["params"], reference["params"], strict=True):
            np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=f"mesh of {n} devices")


MLP = {"kind": "rso", "model": "mlp", "evaluator": "generic", "layers": ["stages_0/Dense_0/kernel"], "weights": 20,
       "devices": [1, 2, 4]}
RSO_CASES = [
    dict(MLP, dtype="float64", hlo=True),
    dict(MLP, dtype="float32"),
    {"kind": "rso", "model": "convnet", "evaluator": "cached", "layers": ["stages_1/Conv_0/kernel"], "weights": 12,
     "devices": [2], "dtype": "float32"},
    {"kind": "rso", "model": "convnet", "evaluator": "incremental", "layers": ["stages_0/Conv_0/kernel"], "weights": 12,
     "devices": [4], "dtype": "float64"},
]


@pytest.fixture(scope="module")
def four_devices():
    """One worker with 4 CPU devices: each case without a mesh and on its meshes, and the errors."""
    cases = RSO_CASES + [{"kind": "sgd", "model": "mlp", "dtype": d, "devices": [2, 4]} for d in ("float64", "float32")]
    return cases, result(run_worker({"cases": cases, "errors": True}))


def test_rso_same_decisions_and_parameters_on_1_2_4_devices(four_devices):
    cases, out = four_devices
    for case, runs in zip(cases, out["results"], strict=True):
        if case["kind"] == "rso":
            assert sum(runs["no mesh"]["accepted"]) > 0, case
            # Same decisions, so float64 parameters are identical; float32 within 1e-5.
            assert_same_run(runs, 0.0 if case["dtype"] == "float64" else 1e-5)


def test_rso_work_is_partitioned(four_devices):
    """The compiled sweep on 2 devices gathers 8 of the 16 examples per device and all-reduces."""
    _, out = four_devices
    assert out["results"][0]["2"]["all_reduce"] and out["results"][0]["2"]["shards_batch"]


def test_sgd_same_parameters_on_1_2_4_devices(four_devices):
    cases, out = four_devices
    for case, runs in zip(cases, out["results"], strict=True):
        if case["kind"] == "sgd":
            for run in runs.values():
                assert run["loss"] == pytest.approx(runs["no mesh"]["loss"], rel=1e-5)
            # The gradient sums over the batch: split over devices, the order of the sum changes.
            assert_same_run(runs, 1e-12 if case["dtype"] == "float64" else 1e-5)


def test_batch_size_must_divide_over_devices(four_devices):
    _, out = four_devices
    for name in ("rso", "sgd"):
        assert out["errors"][name].startswith("batch_size: 18 does not divide over 4 devices")
    assert out["describe"] == {"n_devices": 4, "n_processes": 1}


def test_two_processes_match_one_device(four_devices):
    """Two processes with 2 CPU devices each, joined by `jax.distributed.initialize`: the mesh
    spans all 4 devices, and both processes end with the parameters of the one-device run."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    case = dict(RSO_CASES[0], devices=[0])
    procs = [
        run_worker({"cases": [case], "coordinator": f"localhost:{port}", "num_processes": 2, "process_id": i}, devices=2)
        for i in range(2)
    ]
    outs = [result(p) for p in procs]
    for i, out in enumerate(outs):
        assert out["process"] == i and out["describe"] == {"n_devices": 4, "n_processes": 2}
        assert_same_run({"no mesh": four_devices[1]["results"][0]["no mesh"], "2x2": out["results"][0]["0"]}, 0.0)


def test_devices_flag_checked_against_the_devices(tmp_path):
    from rsojax import experiment

    config, workdir = experiment.parse_flags(["--devices", "3", "--workdir", str(tmp_path / "w")])
    with pytest.raises(experiment.UsageError, match="^--devices: expected 0 \\(all\\) to 1"):
        experiment.train_and_evaluate(config, workdir)
    assert not (tmp_path / "w").exists()  # refused before anything is written
