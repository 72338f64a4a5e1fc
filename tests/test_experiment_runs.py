"""Several RSO runs in one program, from `rsojax.train` to the command lines: each run is the
single run of its seeds and swept value, one workdir holds them all, and a killed K-run resumes
to every run's result.

The command-line runs share one compare.py run with two seeds and two values of sigma_scale
(`compared_runs`): four RSO runs in one workdir, two SGD runs one after the other.
"""

import contextlib
import dataclasses
import io
import json
import os
import signal
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, script

import rsojax
import rsojax.train
from rsojax import experiment
from rsojax.checkpoint import Checkpointer
from rsojax.data import Dataset
from rsojax.experiment import ExperimentConfig
from rsojax.experiment import workdir as workdirs
from rsojax.records import by_run, load, read_records, result_rows
from rsojax.rso import RSO
from rsojax.train import params_sha256, run_rso, start_rso_runs

# 1 cycle of the tests' tiny network (TINY: 64 images, 2 channels, kernels only) in chunks of 16
# weights, batch 16; seeds and init seeds differ between the runs, as sigma_scale does.
RUNS = ["--seeds", "0,1", "--init_seeds", "420,7", "--sweep", "sigma_scale=0.5,2"]
TINY_1 = ["--cycles", "1", *TINY[2:], "--chunk_size", "16"]
LABELS = [
    {"run": 0, "seed": 0, "init_seed": 420, "sigma_scale": 0.5},
    {"run": 1, "seed": 1, "init_seed": 7, "sigma_scale": 0.5},
    {"run": 2, "seed": 0, "init_seed": 420, "sigma_scale": 2.0},
    {"run": 3, "seed": 1, "init_seed": 7, "sigma_scale": 2.0},
]


def test_runs_are_every_swept_value_with_every_seed():
    config = ExperimentConfig(seeds=(0, 1), init_seeds=(420, 7), sweep={"sigma_scale": (0.5, 2)})
    assert config.runs == LABELS
    assert ExperimentConfig(seeds=(3, 5)).runs == [{"run": 0, "seed": 3, "init_seed": 420}, {"run": 1, "seed": 5, "init_seed": 420}]
    assert ExperimentConfig(sweep={"weight_decay": (0.0, 0.01)}).runs == [
        {"run": 0, "seed": 72, "init_seed": 420, "weight_decay": 0.0}, {"run": 1, "seed": 72, "init_seed": 420, "weight_decay": 0.01}]
    assert ExperimentConfig().runs is None  # no runs flags: the single run, as before
    config, _ = experiment.parse_flags(["--workdir", "w", *RUNS])
    assert (config.seeds, config.init_seeds, config.sweep) == ((0, 1), (420, 7), {"sigma_scale": (0.5, 2.0)})
    assert experiment.parse_flags(["--workdir", "w", "--seeds", "2-4,9"])[0].seeds == (2, 3, 4, 9)


def test_run_k_takes_the_decisions_of_the_single_run_with_its_seeds_and_swept_value(monkeypatch):
    """In float64, each run of a K-run ends with the parameters of the run that `run_rso` makes
    alone from its seed, init seed and swept value, with the same records; a K-run resumed from
    a chunk boundary ends as the uninterrupted one."""
    init = rsojax.train.init_params
    monkeypatch.setattr(rsojax.train, "init_params", lambda model, seed: jax.tree.map(lambda a: a.astype(jnp.float64), init(model, seed)))
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (120, 5), jnp.float64)
    y = jnp.argmax(x @ jax.random.normal(kw, (5, 10), jnp.float64), axis=1).astype(jnp.int32)
    data, model = Dataset(x[:80], y[:80], x[80:], y[80:]), rsojax.mlp(hidden=(4,), input_shape=(5,))
    config = rsojax.RSOConfig(batch_size=16, cycles=1)
    rso = rsojax.rso_trainer(model, config)
    labels = [{"run": 0, "seed": 3, "init_seed": 11, "weight_decay": 0.0}, {"run": 1, "seed": 5, "init_seed": 12, "weight_decay": 0.1}]
    steps = list(run_rso(rso, model, data, chunk_size=16, runs=labels))
    records = [r for s in steps if s.record for r in s.record]
    assert [r["run"] for r in records] == [0, 1] * len(rso.layers)

    def same(ours, alone, k):
        assert {key: ours[key] for key in labels[k]} == labels[k]
        for key, value in alone.items():
            if key.startswith("batch_loss"):  # summed in another order under vmap
                assert ours[key] == pytest.approx(value, rel=1e-12, abs=0)
            elif key != "wall_time_s":
                assert ours[key] == value, key

    for k, label in enumerate(labels):
        alone_rso = rsojax.rso_trainer(model, dataclasses.replace(config, weight_decay=label["weight_decay"]))
        alone = list(run_rso(alone_rso, model, data, chunk_size=16, seed=label["seed"], init_seed=label["init_seed"]))
        run_k = jax.tree.map(lambda a, k=k: a[k], steps[-1].run.state.params)
        # The same decisions; the kept values up to XLA contracting w' + dw into one fused
        # multiply-add in one program and not in the other (a different decision moves a whole dw).
        for ours, theirs in zip(jax.tree.leaves(run_k), jax.tree.leaves(alone[-1].run.state.params)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
        alone_records = [s.record for s in alone if s.record]
        assert len(by_run(records)[k]) == len(alone_records)
        for ours, theirs in zip(by_run(records)[k], alone_records):
            same(ours, theirs, k)
    assert len({params_sha256(jax.tree.map(lambda a, k=k: a[k], steps[-1].run.state.params)) for k in range(2)}) == 2

    middle = next(i for i, s in enumerate(steps) if s.record is None and int(s.run.weight) > 0 and int(s.run.layer) > 0)
    resumed = list(run_rso(rso, model, data, steps[middle], chunk_size=16, runs=labels))
    assert params_sha256(resumed[-1].run.state.params) == params_sha256(steps[-1].run.state.params)
    later = [r for s in steps[middle + 1 :] if s.record for r in s.record]
    assert [{**r, "wall_time_s": 0} for s in resumed if s.record for r in s.record] == [{**r, "wall_time_s": 0} for r in later]


def test_table_rows_give_each_swept_value_mean_and_std_over_its_runs():
    """The rows of compare.py, ablations.py and peer.py: a method's runs per swept value, the
    accuracies as mean ± sample standard deviation of each run's final and best."""
    accuracies = {0: [0.1, 0.3], 1: [0.2, 0.2], 2: [0.5, 0.4], 3: [0.6, 0.9]}  # run -> per record
    records = [{**LABELS[k], "test_accuracy": accuracies[k][i], "weight_updates": 10 * (i + 1), "wall_time_s": 3.0 + i}
               for i in range(2) for k in range(4)]
    assert result_rows("RSO", records) == [
        ["RSO sigma_scale=0.5", "25.00 ± 7.07", "25.00 ± 7.07", "20", "4"],   # finals 0.3, 0.2; bests 0.3, 0.2
        ["RSO sigma_scale=2", "65.00 ± 35.36", "70.00 ± 28.28", "20", "4"],   # finals 0.4, 0.9; bests 0.5, 0.9
    ]
    single = [{"test_accuracy": 0.25, "weight_updates": 5, "wall_time_s": 1.0}, {"test_accuracy": 0.2, "weight_updates": 9, "wall_time_s": 2.0}]
    assert result_rows("SGD", single) == [["SGD", "20.00", "25.00", "9", "2"]]


def test_a_single_run_saved_without_the_runs_settings_resumes_and_a_k_run_is_another_run(tmp_path):
    """A workdir whose config.json predates `seeds`, `init_seeds` and `sweep` holds a single run:
    the same single run resumes in it; runs asked for there are another configuration."""
    saved = json.loads(json.dumps(dataclasses.asdict(ExperimentConfig())))
    for name in ("seeds", "init_seeds", "sweep"):
        del saved[name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    lock = experiment.WorkdirLock(str(tmp_path))
    try:
        workdirs.check(str(tmp_path), ExperimentConfig(), lock)
        with pytest.raises(experiment.UsageError, match=r"seeds: None -> \[0, 1\]"):
            workdirs.check(str(tmp_path), ExperimentConfig(seeds=(0, 1)), lock)
        with pytest.raises(experiment.UsageError, match=r"sweep.sigma_scale: None -> \[0.5, 2.0\]"):
            workdirs.check(str(tmp_path), ExperimentConfig(sweep={"sigma_scale": (0.5, 2)}), lock)
    finally:
        lock.release()


def run_cli(name, argv) -> tuple[int, str]:
    """experiments/<name>.py's exit status and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = experiment.cli(lambda: script(name).main(argv), f"{name}.py")
    return status, err.getvalue()


def compare_argv(data, workdir, *more):
    return [*TINY_1, "--rso_batch_size", "16", "--sgd_batch_size", "16", "--data", data, "--workdir", str(workdir), *more]


@pytest.fixture(scope="module")
def compared_runs(mnist_npz, tmp_path_factory):
    """compare.py with RUNS and TensorBoard files: four RSO runs in WORKDIR/rso, SGD with each seed."""
    workdir = tmp_path_factory.mktemp("compare_runs")
    status, err = run_cli("compare", compare_argv(mnist_npz, workdir, *RUNS, "--tensorboard"))
    assert status == 0, err
    return str(workdir)


def spreads(values) -> dict:
    return {"mean": np.mean(values), "std": np.std(values, ddof=1), "min": min(values), "max": max(values), "n": len(values)}


def test_one_workdir_holds_every_run(compared_runs):
    workdir = os.path.join(compared_runs, "rso")
    records = read_records(workdir)
    model = rsojax.mnist_convnet(channels=2)
    layers = model.search_order(kernels_only=True)
    assert [(r["run"], r["layer"]) for r in records] == [(k, path) for path in layers for k in range(4)]
    for k, label in enumerate(LABELS):
        assert load(workdir, run=k) == [r for r in records if r["run"] == k]
        assert all({key: r[key] for key in label} == label for r in load(workdir, run=k))
    assert load(workdir, as_frame=True).groupby("run").size().tolist() == [len(layers)] * 4

    # The summary: each run's result from its records, the spread from those, literally.
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    final = [load(workdir, run=k)[-1]["test_accuracy"] for k in range(4)]
    best = [max(r["test_accuracy"] for r in load(workdir, run=k)) for k in range(4)]
    assert [{key: run[key] for key in LABELS[0]} for run in summary["runs"]] == LABELS
    assert [run["test_accuracy"] for run in summary["runs"]] == final
    assert [run["best_test_accuracy"] for run in summary["runs"]] == best
    assert summary["across_runs"] == {"test_accuracy": pytest.approx(spreads(final)),
                                      "best_test_accuracy": pytest.approx(spreads(best))}
    assert summary["by_sweep"] == [
        {"sigma_scale": value, "runs": runs, "test_accuracy": pytest.approx(spreads([final[k] for k in runs])),
         "best_test_accuracy": pytest.approx(spreads([best[k] for k in runs]))}
        for value, runs in ((0.5, [0, 1]), (2.0, [2, 3]))
    ]
    assert len(set(final)) > 1 and summary["across_runs"]["test_accuracy"]["std"] > 0  # not vacuous
    assert "test_accuracy" not in summary and "params_sha256" not in summary  # no single run's result
    assert summary["weight_updates"] == records[-1]["weight_updates"] == 2 * 9 + 5 * 36 + 2 * 10
    assert open(os.path.join(workdir, "curves.png"), "rb").read(4) == b"\x89PNG"

    # The final checkpoint holds every run: each run's parameters give its hash and accuracy.
    config = ExperimentConfig(**{k: v for k, v in summary["config"].items() if k not in ("rso", "sgd")})
    assert config.runs == LABELS
    data = experiment.load_data(config)
    rso = rsojax.rso_trainer(model, rsojax.RSOConfig(batch_size=16, cycles=1), kernels_only=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    _, run, meta = ckpt.restore(start_rso_runs(rso, model, data, LABELS).run)
    ckpt.close()
    assert meta["finished"] and meta["records"] == records
    for k in range(4):
        params = jax.tree.map(lambda a, k=k: a[k], run.state.params)
        assert summary["runs"][k]["params_sha256"] == params_sha256(params)
        assert summary["runs"][k]["test_accuracy"] == rsojax.accuracy(model, params, data.x_train, data.x_test, data.y_test)
    assert len({run["params_sha256"] for run in summary["runs"]}) == 4


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """The scalar series of the TensorBoard event files in `logdir` (TensorBoard's reader, without TensorFlow)."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_a_directory_per_run(compared_runs):
    workdir = os.path.join(compared_runs, "rso")
    for k in range(4):
        series = scalars(os.path.join(workdir, f"run_{k}"))
        records = load(workdir, run=k)
        assert series["test_accuracy"] == [(r["weight_updates"], float(np.float32(r["test_accuracy"]))) for r in records]
        assert series["seed"][0][1] == LABELS[k]["seed"]


def test_compare_table_gives_mean_and_std_over_the_seeds(compared_runs):
    table = open(os.path.join(compared_runs, "compare.md")).read().splitlines()
    assert "mean ± standard deviation over the seeds 0,1" in table[0]
    rso = json.load(open(os.path.join(compared_runs, "rso", "summary.json")))

    def cells(stats):
        return " | ".join(f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" for s in (stats["test_accuracy"], stats["best_test_accuracy"]))

    for row, group in zip(table[4:6], rso["by_sweep"], strict=False):
        assert row.startswith(f"| RSO sigma_scale={group['sigma_scale']:g} | 1 | 16 | {cells(group)} | 218 | ")
    sgd = [json.load(open(os.path.join(compared_runs, "sgd", f"seed_{k}", "summary.json"))) for k in range(2)]
    assert [(s["config"]["seed"], s["config"]["init_seed"]) for s in sgd] == [(0, 420), (1, 7)]
    final, best = ([s[key] for s in sgd] for key in ("test_accuracy", "best_test_accuracy"))
    assert table[6].startswith(f"| SGD | 1 | 16 | {cells({'test_accuracy': spreads(final), 'best_test_accuracy': spreads(best)})} | ")
    assert len(table) == 7 and open(os.path.join(compared_runs, "compare.png"), "rb").read(4) == b"\x89PNG"


def test_k_run_stopped_by_sigterm_resumes_to_every_runs_result(compared_runs, mnist_npz, tmp_path):
    """SIGTERM in chunk 6 (the dense layer's 2 chunks, the first conv's 3, then the second
    conv's first): exit 75 after a checkpoint inside that layer; the same command ends with
    each run's uninterrupted result."""
    chunks = [0]
    original = RSO.chunks

    def signal_in_chunk_6(self, *args, **kwargs):
        for item in original(self, *args, **kwargs):
            chunks[0] += 1
            if chunks[0] == 6:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    argv = [*TINY_1, "--batch_size", "16", "--data", mnist_npz, "--workdir", str(tmp_path), "--checkpoint_every_s", "3600", *RUNS]
    previous = signal.getsignal(signal.SIGTERM)
    RSO.chunks = signal_in_chunk_6
    try:
        status, err = run_cli("mnist", argv)
    finally:
        RSO.chunks = original
        signal.signal(signal.SIGTERM, previous)
    assert status == 75, err
    assert "stopped by SIGTERM at cycle 1/1, stages_4/Conv_0/kernel, after a checkpoint of 72 weight updates" in err
    assert len(read_records(str(tmp_path))) == 4 * 2 and not os.path.exists(tmp_path / "summary.json")

    status, err = run_cli("mnist", argv)
    assert status == 0 and "resuming after 72 weight updates" in err, err
    ours, theirs = (json.load(open(os.path.join(w, "summary.json"))) for w in (tmp_path, os.path.join(compared_runs, "rso")))
    assert [r["params_sha256"] for r in ours["runs"]] == [r["params_sha256"] for r in theirs["runs"]]
    without_time = [[{k: v for k, v in r.items() if k != "wall_time_s"} for r in read_records(w)]
                    for w in (str(tmp_path), os.path.join(compared_runs, "rso"))]
    assert without_time[0] == without_time[1]

    status, err = run_cli("mnist", argv)  # finished: says so with the spread, trains nothing
    final = ours["across_runs"]["test_accuracy"]
    assert status == 0 and f"has finished already: 4 runs: test accuracy {final['mean']:.4f} ± {final['std']:.4f}" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sweep", "batch_size=16,32"], "--sweep: batch_size cannot differ between runs: it shapes the compiled program"),
        (["--sweep", "channels=2,4"], "--sweep: channels cannot differ between runs"),
        (["--sweep", "sigma_scale"], "--sweep: expected NAME=VALUE,VALUE,... (for example sigma_scale=0.5,1,2), got 'sigma_scale'"),
        (["--sweep", "sigma_scale=1,-1"], "--sweep: sigma_scale: expected a positive number, got -1.0"),
        (["--sweep", "anneal_floor=0.1,0.1"], "--sweep: anneal_floor needs distinct values, got [0.1, 0.1]"),
        (["--seeds", "0-1", "--optimizer", "sgd"], "--seeds: the SGD baseline trains one run at a time"),
        (["--seeds", "3-1"], "--seeds: the range 3-1 is empty; write it low-high"),
        (["--seeds", "0,x"], "--seeds: expected seeds such as 0-7 or 0,3,5, got '0,x'"),
        (["--seeds", "1,1"], "--seeds: two runs would have the same seed and init seed"),
        (["--seeds", "0-2", "--init_seeds", "1,2"], "--init_seeds: expected one per seed of --seeds (3), got 2"),
        (["--seeds", "0-2", "--seed", "5"], "--seed: --seeds gives the runs' sampling seeds; leave out --seed"),
    ],
)
def test_bad_runs_are_refused_before_anything_is_written(mnist_npz, tmp_path, args, message):
    workdir = tmp_path / "run"
    status, err = run_cli("mnist", [*TINY_1, "--data", mnist_npz, "--workdir", str(workdir), *args])
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"mnist.py: error: {message}")
    assert not workdir.exists()


def test_runs_that_will_not_fit_are_refused_before_anything_is_written(mnist_npz, tmp_path, monkeypatch):
    """The device's memory, as `rsojax.memory` reads it, holds the data and one run's caches
    but not three: refused in one line saying how many fit."""
    from rsojax import memory

    monkeypatch.setattr(memory, "context_bytes", lambda rso, state, data: (0, 10**6))
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: sum(a.nbytes for a in data_arrays(mnist_npz)) + 10**6)
    workdir = tmp_path / "run"
    argv = [*TINY_1, "--batch_size", "16", "--data", mnist_npz, "--workdir", str(workdir), "--seeds", "0-2"]
    status, err = run_cli("mnist", argv)
    assert status == 2 and "Traceback" not in err
    assert "mnist.py: error: --seeds: 3 run(s) need about" in err and "1 run(s) fit" in err
    assert not workdir.exists()


def data_arrays(npz):
    """TINY's training set as the experiment holds it (64 float32 images, int32 labels)."""
    from rsojax.data import load_npz

    data = load_npz(npz)
    return data.x_train[:64], data.y_train[:64]
