"""experiments/gpu_check.py, run as a GPU session runs it, at --tiny sizes on a small .npz."""

import json
import os
import subprocess
import sys
import tarfile

from conftest import ROOT, write_npz


def test_tiny_run_writes_every_part(tmp_path):
    data = write_npz(tmp_path / "mnist.npz", n=512)  # random uint8 images, Keras' mnist.npz layout
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "experiments/gpu_check.py", "--tiny", "--data", data, "--out", str(out), "--budget_s", "600",
         "--baseline", ROOT, "--baseline_modes", "cached", "--trace"],  # this checkout as its own baseline
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "protocol: cycle 2" in proc.stdout  # progress lines

    result = json.load(open(out / "gpu_check.json"))
    parts = result["parts"]
    statuses = {name: p["status"] for name, p in parts.items()}
    assert statuses == dict.fromkeys(("benchmark", "protocol", "agreement", "sgd"), "ok")
    assert result["device"].startswith("cpu") and result["jax_version"] and result["commit"]

    bench, baseline = parts["benchmark"]["runs"]  # --tiny: one evaluator, batch and precision; then the baseline's
    assert bench["status"] == "ok" and bench["result"]["mode"] == "cached" and bench["result"]["cycle_seconds"] > 0
    assert (bench["checkout"], baseline["checkout"]) == ("this", "baseline")
    assert baseline["name"] == "baseline_cached_32_float32"
    assert baseline["status"] == "ok" and baseline["result"]["mode"] == "cached"
    assert result["baseline"].startswith("unknown (")  # ROOT has no commit.txt
    with tarfile.open(out / "traces.tar.gz") as tar:  # the first run's profile, one folder per layer
        names = tar.getnames()
    layers = {n.split("/")[1] for n in names if n.endswith("sweep.hlo.txt")}
    assert len(layers) == 19 and any(n.endswith(".xplane.pb") for n in names)

    protocol = parts["protocol"]
    assert protocol["cycles_done"] == 2 and protocol["stopped"] == "max_cycles" and protocol["train_images"] == 512
    assert all(0 <= c["test_accuracy"] <= 1 and c["seconds"] > 0 for c in protocol["cycles"])
    assert protocol["median_cycle_s"] > 0 and len(protocol["last_cycle_layer_s"]) == 19  # every layer of the network

    agreement = parts["agreement"]
    assert agreement["state"] == "after the protocol part" and agreement["cycle"] == 2
    assert agreement["weights"] == 16 and agreement["agreement"] == 1.0  # a CPU computes float32 either way
    assert agreement["median_loss_error"] == 0.0 and agreement["median_gap"] > 0

    sgd = parts["sgd"]
    assert sgd["epochs_done"] == 2 and sgd["median_epoch_s"] > 0
    assert all(0 <= e["test_accuracy"] <= 1 for e in sgd["epochs"])

    md = open(out / "gpu_check.md").read()
    for heading in ("Seconds per cycle", "The paper's protocol", "precision default against float32", "SGD baseline"):
        assert heading in md
    assert md.count("| cached | 32 | float32 |") == 2 and "16 (100.0%)" in md and "Not measured" not in md
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
