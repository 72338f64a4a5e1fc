"""experiments/gpu_check.py, run as a GPU session runs it, at --tiny sizes on a small .npz."""

import json
import os
import subprocess
import sys
import tarfile

import pytest
from conftest import ROOT, write_npz


# A stand-in for another checkout's experiments/benchmark.py: a result no run of this checkout
# gives (123 s per cycle), to tell which checkout's script ran.
BASELINE_BENCHMARK = """
import argparse, json
p = argparse.ArgumentParser()
for flag in ("--mode", "--batch_size", "--precision", "--train_size", "--weights_per_layer", "--out"):
    p.add_argument(flag)
a = p.parse_args()
json.dump({"mode": a.mode, "batch_size": int(a.batch_size), "precision": a.precision, "cycle_seconds": 123.0,
           "weights_per_s": 7.0, "achieved_gflops": 9.0, "compile_seconds": 11.0,
           "per_layer": [{"layer": "stages_1/Conv_0/kernel", "weights_per_s": 500.0}]}, open(a.out, "w"))
"""


def test_tiny_run_writes_every_part(tmp_path):
    data = write_npz(tmp_path / "mnist.npz", n=512)  # random uint8 images, Keras' mnist.npz layout
    baseline = tmp_path / "baseline"
    (baseline / "experiments").mkdir(parents=True)
    (baseline / "experiments" / "benchmark.py").write_text(BASELINE_BENCHMARK)
    (baseline / "commit.txt").write_text("0123456789ab\n")
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "experiments/gpu_check.py", "--tiny", "--data", data, "--out", str(out), "--budget_s", "600",
         "--baseline", str(baseline), "--baseline_modes", "cached", "--trace"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "protocol: cycle 2" in proc.stdout  # progress lines

    result = json.load(open(out / "gpu_check.json"))
    parts = result["parts"]
    statuses = {name: p["status"] for name, p in parts.items()}
    assert statuses == dict.fromkeys(("benchmark", "protocol", "agreement", "sgd"), "ok")
    assert result["device"].startswith("cpu") and result["jax_version"] and result["commit"]

    # --tiny: one evaluator, batch and precision; then the same run by the baseline's script
    bench, other = parts["benchmark"]["runs"]
    assert bench["status"] == "ok" and bench["result"]["mode"] == "cached" and bench["result"]["batch_size"] == 32
    assert (bench["checkout"], other["checkout"]) == ("this", "baseline")
    assert other["name"] == "baseline_cached_32_float32" and other["status"] == "ok"
    assert other["result"]["cycle_seconds"] == 123.0  # the baseline's script ran, not this checkout's
    assert result["baseline"] == "0123456789ab"  # from its commit.txt
    with tarfile.open(out / "traces.tar.gz") as tar:  # the first run's profile, one folder per layer
        names = tar.getnames()
    layers = {n.split("/")[1] for n in names if n.endswith("sweep.hlo.txt")}
    assert len(layers) == 19 and any(n.endswith(".xplane.pb") for n in names)

    protocol = parts["protocol"]
    assert protocol["cycles_done"] == 2 and protocol["stopped"] == "max_cycles" and protocol["train_images"] == 512
    cycles, layers = protocol["cycles"], protocol["layers"]
    assert [c["cycle"] for c in cycles] == [1, 2] and len(layers) == 2 * 19
    ends = [r for r in layers if r["layer"] == layers[-1]["layer"]]  # the last layer of each cycle
    assert [c["test_accuracy"] for c in cycles] == [r["test_accuracy"] for r in ends]
    assert [c["wall_time_s"] for c in cycles] == [r["wall_time_s"] for r in ends]
    assert [c["seconds"] for c in cycles] == [ends[0]["wall_time_s"], ends[1]["wall_time_s"] - ends[0]["wall_time_s"]]
    assert protocol["median_cycle_s"] == cycles[1]["seconds"]  # the median from cycle 2 on
    per_layer = protocol["last_cycle_layer_s"]  # every layer of the network, adding up to the cycle's time
    assert len(per_layer) == 19 and sum(per_layer.values()) == pytest.approx(cycles[1]["seconds"], rel=1e-9)

    agreement = parts["agreement"]
    assert agreement["state"] == "after the protocol part" and agreement["cycle"] == 2 and agreement["weights"] == 16
    assert agreement["agreement"] == agreement["agree"] / 16

    sgd = parts["sgd"]
    assert sgd["epochs_done"] == 2 and [e["epoch"] for e in sgd["epochs"]] == [1, 2]
    assert sgd["median_epoch_s"] == sgd["epochs"][1]["seconds"]

    md = open(out / "gpu_check.md").read()
    for heading in ("Seconds per cycle", "The paper's protocol", "precision default against float32", "SGD baseline"):
        assert heading in md
    r = bench["result"]
    assert f"| cached | 32 | float32 | xla | 1 | {result['commit']} | {r['cycle_seconds']:.2f} | {r['cycle_seconds']:.2f} |" in md
    assert "| cached | 32 | float32 | xla | 1 | 0123456789ab | 123.00 | 123.00 | 2.000 | 7 | 9 | 11 |" in md  # 1000 / 500 ms per weight
    assert f"| {agreement['agree']} ({100 * agreement['agreement']:.1f}%) |" in md and "Not measured" not in md
    assert "protocol: cycle 2" in open(out / "gpu_check.log").read()


def test_full_sizes_refuse_a_cpu(tmp_path):
    """Without an accelerator the full sizes stop in seconds, saying why, before any part runs."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "experiments/gpu_check.py", "--data", "unused.npz", "--out", str(out)],
        cwd=ROOT, env=os.environ | {"PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1 and "JAX sees no accelerator" in proc.stdout
    result = json.load(open(out / "gpu_check.json"))
    assert result["preflight"].startswith("cpu") and result["parts"] == {}


def test_bad_options_name_the_argument(tmp_path):
    for argv, named in ((["--parts", "benchmark,bogus"], "--parts"), (["--baseline", str(tmp_path)], "--baseline"),
                        (["--shares", "benchmark=0.7,bogus=1"], "--shares"), (["--shares", "benchmark"], "--shares")):
        proc = subprocess.run(
            [sys.executable, "experiments/gpu_check.py", "--data", "x.npz", "--out", str(tmp_path / "out"), *argv],
            cwd=ROOT, env=os.environ | {"PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 2 and f"error: {named}:" in proc.stderr, proc.stderr
        assert not (tmp_path / "out").exists()  # refused before anything is written


def test_gpu_check_plans_a_benchmark_per_number_of_runs():
    """--bench_runs K,...: one `benchmark.py --runs K` per K (K = 1 without the flag)."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import gpu_check

    args = gpu_check.parse(["--data", "x.npz", "--out", "o", "--bench_modes", "incremental", "--bench_batch_sizes", "512",
                            "--bench_precisions", "float32", "--bench_runs", "1,8"])
    plan = gpu_check.benchmark_plan(args)
    assert [(name, cmd[cmd.index("--runs") + 1] if "--runs" in cmd else None) for name, _, _, cmd in plan] == [
        ("incremental_512_float32", None), ("incremental_512_float32_runs8", "8")
    ]
