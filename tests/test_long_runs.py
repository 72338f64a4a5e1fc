"""experiments/mnist.py as a long run: kill and resume, determinism, clear failures."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))

import mnist  # noqa: E402

from rsojax.data import preprocess  # noqa: E402

MNIST = os.path.join(os.path.dirname(__file__), "..", "experiments", "mnist.py")
# Runs experiments/mnist.py as a process, with TFDS's mock MNIST in the given data_dir.
RUNNER = """
import runpy, sys
import tensorflow_datasets as tfds
data_dir, script = sys.argv[1], sys.argv[2]
sys.argv = [script, "--data_dir", data_dir, *sys.argv[3:]]
with tfds.testing.mock_data(num_examples=96, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir):
    runpy.run_path(script, run_name="__main__")
"""
TINY = ["--cycles", "1", "--batch_size", "16", "--train_subset", "64", "--channels", "2", "--chunk_size", "8"]


def start(data_dir, *args):
    cmd = [sys.executable, "-c", RUNNER, data_dir, MNIST, *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=600)
    return proc.returncode, err


def comparable(workdir):
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    for r in records:
        r.pop("wall_time_s")
    return json.load(open(os.path.join(workdir, "summary.json")))["params_sha256"], records


def test_killed_run_resumes_to_the_same_result(mock_mnist, tmp_path):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    proc = start(mock_mnist, *TINY, "--workdir", killed, "--checkpoint_every_s", "0")
    deadline = time.time() + 300
    ckpts = os.path.join(killed, "checkpoints")
    while time.time() < deadline and proc.poll() is None:
        steps = [d for d in os.listdir(ckpts) if d.isdigit()] if os.path.isdir(ckpts) else []
        if len(steps) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(np.random.default_rng().uniform(0, 1.5))  # an arbitrary moment after a checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "summary.json"))

    code, err = finish(start(mock_mnist, *TINY, "--workdir", killed))
    assert code == 0, err
    assert "resuming after" in err
    code, err = finish(start(mock_mnist, *TINY, "--workdir", whole))
    assert code == 0, err
    assert comparable(killed) == comparable(whole)

    code, err = finish(start(mock_mnist, *TINY, "--workdir", killed))  # finished: says so, exits 0
    assert code == 0 and "finished already" in err


def test_user_errors_exit_nonzero_with_one_line(mock_mnist, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = finish(start(mock_mnist, *TINY, "--workdir", blocker / "run"))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"mnist.py: error: --workdir: {blocker / 'run'} cannot be written")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train_subset", "500"], "train_subset: 500 is larger than the training split (96 images)"),
        (["--train_subset", "32", "--batch_size", "64"], "--batch_size: 64 is larger than the training set (32 examples)"),
        (["--optimizer", "sgd", "--train_subset", "32", "--batch_size", "64"], "--batch_size: 64 is larger than the training set (32 images)"),
        (["--cycles", "0"], "--cycles: expected a positive integer"),
    ],
)
def test_bad_settings_fail_before_work(mock_mnist, tmp_path, capsys, args, message):
    code = mnist.cli(["--workdir", str(tmp_path / "w"), "--data_dir", mock_mnist, "--channels", "2", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert f"mnist.py: error: {message}" in err
    assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")


@pytest.mark.parametrize("defect, message", [("nan", "data: x_train contains NaN or inf"), ("label", "data: y_train has labels outside 0..9")])
def test_bad_data_fails_before_work(tmp_path, capsys, defect, message):
    x = np.zeros((40, 28, 28, 1), np.float32)
    y = np.arange(40) % 10
    if defect == "nan":
        x[3, 4, 5, 0] = np.inf
    else:
        y[7] = 12
    task = dataclasses.replace(mnist.MNIST, load=lambda data_dir, subset: preprocess(x, y, x, y, subset))
    argv = ["--workdir", str(tmp_path), "--channels", "2", "--cycles", "1", "--batch_size", "16"]
    assert mnist.cli(argv, task=task) == 2
    assert f"mnist.py: error: {message}" in capsys.readouterr().err


def test_resuming_with_another_configuration_is_refused(mock_mnist, tmp_path, capsys):
    workdir = str(tmp_path)
    base = ["--workdir", workdir, "--data_dir", mock_mnist, "--optimizer", "sgd", "--cycles", "1", "--train_subset", "32"]
    assert mnist.cli(base + ["--batch_size", "16"]) == 0
    assert mnist.cli(base + ["--batch_size", "8", "--learning_rate", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "batch_size: 16 -> 8" in err and "learning_rate: 0.05 -> 0.1" in err and "new --workdir" in err
