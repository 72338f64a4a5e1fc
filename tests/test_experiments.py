"""rsojax.experiment and the command lines end to end, on a small MNIST-like .npz.

One compare.py run (RSO and SGD, the session's `compared` fixture) is the run that the
file-contract, rerun, refusal and resume tests read; the kill -9 test is in test_long_runs.py.
"""

import dataclasses
import json
import os
import sys
import types

import jax
import numpy as np
import optax
import pytest
from conftest import comparable, mnist_like, script, tiny_argv, write_npz

import rsojax
from rsojax import experiment
from rsojax.checkpoint import Checkpointer
from rsojax.experiment import ExperimentConfig, SGDConfig, UsageError
from rsojax.experiment.run import Progress
from rsojax.records import read_records
from rsojax.train import SGDRun, params_sha256, start_rso, start_sgd

@pytest.mark.parametrize("optimizer", ["rso", "sgd"])
def test_run_writes_every_file_of_the_contract(compared, optimizer):
    workdir = os.path.join(compared, optimizer)
    config = ExperimentConfig(**{
        k: v for k, v in json.load(open(os.path.join(workdir, "config.json"))).items() if k not in ("rso", "sgd")
    })
    assert (config.optimizer, config.channels, config.kernels_only, config.train_subset) == (optimizer, 2, True, 64)
    records = read_records(workdir)
    model = rsojax.mnist_convnet(channels=2)
    n_params = sum(a.size for a in jax.tree.leaves(rsojax.init_params(model)))
    if optimizer == "rso":
        assert [r["layer"] for r in records] == model.search_order(kernels_only=True) * 2
        assert [r["weight_updates"] for r in records][-1] == 2 * (2 * 9 + 5 * 36 + 2 * 10)
        keys = {"cycle", "layer", "n_weights", "accepted", "nonfinite", "batch_loss_before", "batch_loss_after"}
    else:
        assert [r["epoch"] for r in records] == [0, 1]
        assert records[-1]["weight_updates"] == 2 * n_params * (64 // 16)
        keys = {"epoch", "train_loss"}
    for record in records:
        assert keys | {"progress", "test_accuracy", "weight_updates", "wall_time_s"} <= record.keys()

    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["config"] == json.load(open(os.path.join(workdir, "config.json")))
    assert summary["config"][optimizer]["batch_size"] == 16 and summary["optimizer"] == optimizer
    assert summary["precision"] == summary["config"]["rso"]["precision"] == "float32"
    assert (summary["n_devices"], summary["n_processes"], summary["jax_version"]) == (1, 1, jax.__version__)
    assert summary["test_accuracy"] == records[-1]["test_accuracy"]
    assert summary["best_test_accuracy"] == max(r["test_accuracy"] for r in records)
    assert summary["weight_updates"] == records[-1]["weight_updates"]
    assert open(os.path.join(workdir, "curves.png"), "rb").read(4) == b"\x89PNG"

    # The newest checkpoint is the final state: its parameters are the summary's, and give its accuracy.
    data = experiment.load_data(config)
    if optimizer == "sgd":
        fresh = start_sgd(model, optax.sgd(0.05, momentum=0.9))
    else:
        fresh = start_rso(rsojax.rso_trainer(model, rsojax.RSOConfig(batch_size=16, cycles=2), kernels_only=True), model, data)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    _, run, meta = ckpt.restore(fresh.run)
    ckpt.close()
    params = run.params if isinstance(run, SGDRun) else run.state.params
    assert meta["finished"] and meta["records"] == records
    assert params_sha256(params) == summary["params_sha256"]
    assert rsojax.accuracy(model, params, data.x_train, data.x_test, data.y_test) == summary["test_accuracy"]


def test_compare_writes_table_and_plot(compared):
    table = open(os.path.join(compared, "compare.md")).read().splitlines()
    assert table[2] == "| optimizer | cycles/epochs | batch | test acc. (%) | best (%) | weight updates | train time (s) |"
    for row, optimizer in zip(table[4:], ("rso", "sgd"), strict=True):
        summary = json.load(open(os.path.join(compared, optimizer, "summary.json")))
        assert row.startswith(f"| {optimizer.upper()} | 2 | 16 | {100 * summary['test_accuracy']:.2f} | ")
        assert f"| {summary['weight_updates']:,} |" in row
    assert open(os.path.join(compared, "compare.png"), "rb").read(4) == b"\x89PNG"


def test_finished_run_prints_its_result_and_is_not_rerun(compared, mnist_npz, capsys):
    workdir = os.path.join(compared, "rso")
    before = {name: os.stat(os.path.join(workdir, name)).st_mtime_ns for name in ("summary.json", "metrics.jsonl")}
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    argv = tiny_argv(mnist_npz, workdir)
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 0
    assert f"has finished already: test accuracy {summary['test_accuracy']:.4f}" in capsys.readouterr().err
    assert script("mnist").main(argv) == summary  # the wall time too: a rerun would measure another
    assert {name: os.stat(os.path.join(workdir, name)).st_mtime_ns for name in before} == before


def test_resuming_with_another_configuration_is_refused(compared, mnist_npz, capsys):
    workdir = os.path.join(compared, "sgd")
    config = open(os.path.join(workdir, "config.json")).read()
    argv = tiny_argv(mnist_npz, workdir, "sgd", "--batch_size", "8", "--learning_rate", "0.1")
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 2
    err = capsys.readouterr().err
    assert "sgd.batch_size: 16 -> 8" in err and "sgd.learning_rate: 0.05 -> 0.1" in err and "new --workdir" in err
    assert open(os.path.join(workdir, "config.json")).read() == config


def test_interrupted_run_resumes_in_process_to_the_same_result(compared, mnist_npz, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first epoch's checkpoint: exit code 130, then the same command resumes
    and ends as the uninterrupted run (compare.py's) did."""
    save = Checkpointer.save

    def save_then_interrupt(self, step, state, meta):
        save(self, step, state, meta)
        raise KeyboardInterrupt

    argv = tiny_argv(mnist_npz, tmp_path, "sgd")
    monkeypatch.setattr(Checkpointer, "save", save_then_interrupt)
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    assert len(read_records(str(tmp_path))) == 1 and not os.path.exists(tmp_path / "summary.json")
    monkeypatch.setattr(Checkpointer, "save", save)
    script("mnist").main(argv)
    assert "resuming after" in capsys.readouterr().err
    assert comparable(str(tmp_path)) == comparable(os.path.join(compared, "sgd"))


def scalars(workdir) -> dict[str, list[tuple[int, float]]]:
    """The scalar series of the TensorBoard event files in `workdir`, read by TensorBoard's own reader."""
    # TensorBoard reads event files through TensorFlow where it is installed (8 s to import),
    # unless this marker module exists; then through its own stub, which reads them the same way.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_scalars(records) -> dict[str, list[tuple[int, float]]]:
    """What the event files of `records` must hold: each number (as float32) at its record's weight updates."""
    keys = [k for k, v in records[0].items() if not isinstance(v, str)]
    return {k: [(r["weight_updates"], float(np.float32(r[k]))) for r in records] for k in keys}


@pytest.mark.parametrize("optimizer", ["rso", "sgd"])
def test_tensorboard_event_files_hold_the_records(compared, optimizer):
    records = read_records(os.path.join(compared, optimizer))
    assert scalars(os.path.join(compared, optimizer)) == as_scalars(records)
    assert "test_accuracy" in as_scalars(records) and "layer" not in as_scalars(records)


def test_resumed_run_rewrites_its_event_files_from_the_checkpoint(mnist_npz, tmp_path, monkeypatch, capsys):
    """A run interrupted after a record was written past its checkpoint: once resumed, TensorBoard
    shows each record once, as metrics.jsonl has it."""
    save = Checkpointer.save

    def save_then_interrupt(self, step, state, meta):
        if len(meta["records"]) == 2:  # the second epoch's record is written, not saved
            raise KeyboardInterrupt
        save(self, step, state, meta)

    argv = tiny_argv(mnist_npz, tmp_path, "sgd", "--tensorboard")
    monkeypatch.setattr(Checkpointer, "save", save_then_interrupt)
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 130
    assert len(scalars(tmp_path)["train_loss"]) == 2
    monkeypatch.setattr(Checkpointer, "save", save)
    script("mnist").main(argv)
    assert "resuming after" in capsys.readouterr().err
    assert scalars(tmp_path) == as_scalars(read_records(str(tmp_path)))
    assert len(read_records(str(tmp_path))) == 2


def test_tensorboard_without_its_package_is_refused_before_anything_is_written(mnist_npz, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX raises ImportError
    argv = tiny_argv(mnist_npz, tmp_path / "run", "sgd", "--tensorboard")
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 2
    assert (
        "mnist.py: error: --tensorboard: writing TensorBoard event files needs tensorboardX: "
        "pip install 'rsojax[tensorboard]'"
    ) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("optimizer, flag", [("sgd", "--seed"), ("sgd", "--init_seed"), ("rso", "--seed")])
def test_the_seeds_reach_the_run(compared, mnist_npz, tmp_path, optimizer, flag):
    summary = script("mnist").main(tiny_argv(mnist_npz, tmp_path, optimizer, flag, "7"))
    assert summary["config"][flag[2:]] == 7
    assert summary["params_sha256"] != comparable(os.path.join(compared, optimizer))[0]


def bad_npz(path, defect):
    x, y = mnist_like()
    arrays = {
        "nan": {"x_train": np.where(np.arange(96)[:, None, None] == 3, np.inf, x / 255.0)},
        "label": {"y_train": np.where(np.arange(96) == 7, 12, y)},
        "shape": {"x_train": np.zeros((96, 28, 28, 3), np.uint8), "x_test": np.zeros((96, 28, 28, 3), np.uint8)},
        "key": {},
    }[defect]
    write_npz(path, **arrays)
    if defect == "key":
        arrays = dict(np.load(path))
        del arrays["x_test"]
        np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train_subset", "500"], "--train_subset: 500 is larger than the training split (96 images)"),
        (["--train_subset", "32", "--batch_size", "64"], "--batch_size: 64 is larger than the training set (32 examples)"),
        (["--optimizer", "sgd", "--train_subset", "32", "--batch_size", "64"],
         "--batch_size: 64 is larger than the training set (32 images)"),
        (["--cycles", "0"], "--cycles: expected a positive integer, got 0"),
        (["--optimizer", "sgd", "--learning_rate", "-0.1"], "--learning_rate: expected a positive number, got -0.1"),
        (["--devices", "3"], "--devices: expected 0 (all) to 1 (the devices available), got 3"),
        (["--granularity", "layer"], "--granularity: 'layer' searches against the layer's starting point"),
        (["--process_id", "1"], "--process_id: applies with --distributed only"),
        (["--data", "missing.npz"], "data: missing.npz is not a file"),
        ("nan", "data: x_train contains NaN or inf"),
        ("label", "data: y_train has labels outside 0..9"),
        ("key", "bad.npz has no x_test (has x_train, y_train, y_test)"),
        ("shape", "data: the MNIST network takes images of shape (28, 28, 1), the data has (28, 28, 3)"),
    ],
)
def test_refused_run_writes_nothing(mnist_npz, tmp_path, capsys, args, message):
    data = mnist_npz if isinstance(args, list) else bad_npz(tmp_path / "bad.npz", args)
    workdir = tmp_path / "run"
    argv = ["--workdir", str(workdir), "--data", data, "--channels", "2", "--cycles", "1", "--batch_size", "16"]
    argv += args if isinstance(args, list) else []
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("mnist.py: error: ")
    assert message in err
    assert not workdir.exists()


def test_corrected_command_runs_in_the_refused_workdir(mnist_npz, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = tiny_argv(mnist_npz, blocker / "run", "sgd", "--cycles", "1")
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 2
    assert f"mnist.py: error: --workdir: {blocker / 'run'} cannot be written" in capsys.readouterr().err

    workdir = tmp_path / "run"
    argv = tiny_argv(mnist_npz, workdir, "sgd", "--cycles", "1", "--batch_size", "20000")
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 2
    assert not workdir.exists()
    argv[argv.index("20000")] = "16"
    assert experiment.cli(lambda: script("mnist").main(argv), "mnist.py") == 0
    assert json.load(open(workdir / "summary.json"))["config"]["sgd"]["batch_size"] == 16


def test_the_paper_protocol_is_the_default_and_says_so(mnist_npz, tmp_path, capsys):
    config, workdir = experiment.parse_flags(["--workdir", str(tmp_path / "w")], "mnist")
    assert config == ExperimentConfig() and config.is_paper_protocol() and workdir == str(tmp_path / "w")
    assert (config.rso.cycles, config.rso.batch_size, config.evaluator, config.seed, config.init_seed) == (
        50, 5000, "incremental", 72, 420)
    # The paper's batch does not fit 96 images: refused, after saying what was asked for.
    assert experiment.cli(lambda: script("mnist").main(["--workdir", str(tmp_path / "w"), "--data", mnist_npz]), "mnist.py") == 2
    err = capsys.readouterr().err
    assert "the paper's protocol: RSO, 50 cycles at batch 5000" in err and "--batch_size: 5000 is larger" in err
    cifar = ExperimentConfig.for_task("cifar10")
    assert (cifar.rso.cycles, cifar.sgd.epochs, cifar.evaluator, cifar.is_paper_protocol()) == (500, 500, "incremental", True)


def test_help_shows_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        experiment.parse_flags(["--help"], "cifar10", prog="cifar10.py")
    text = " ".join(capsys.readouterr().out.split())
    default = ExperimentConfig.for_task("cifar10")
    assert "the paper's protocol: RSO, 500 cycles at batch 5000" in text
    assert "--batch_size INT RSO: examples in the minibatch of each weight (the paper: 5000) [default: 5000]; SGD: minibatch [default: 128]" in text
    assert "--evaluator {incremental,cached,generic}" in text and "--input_first sets output_first to False" in text
    for flag, targets in experiment.flag_targets(default).items():
        assert f"--{flag}" in text
        for path, _, _ in targets:
            value = default
            for name in path:
                value = getattr(value, name)
            if value not in (None, False, True, (), {}):  # an empty tuple or dict: off, shown without a default
                assert f"[default: {value}]" in text, flag


def test_flags_set_the_config_fields():
    parse = experiment.parse_flags
    config, _ = parse(["--workdir", "w", "--input_first", "--perturbation", "ternary", "--kernels_only", "--precision",
                       "default", "--global_pool", "avg", "--evaluator", "cached", "--granularity", "layer"])
    assert config.rso == rsojax.RSOConfig(output_first=False, perturbation="ternary", precision="default", granularity="layer")
    assert (config.kernels_only, config.global_pool, config.evaluator) == (True, "avg", "cached")
    config, _ = parse(["--workdir", "w", "--optimizer", "sgd", "--batch_size", "32", "--cycles", "3", "--learning_rate", "0.1"])
    assert config.sgd == SGDConfig(learning_rate=0.1, batch_size=32, epochs=3) and config.rso == rsojax.RSOConfig()
    assert (config.batch_size, config.cycles) == (32, 3)
    every_field = {path for targets in experiment.flag_targets(ExperimentConfig()).values() for path, _, _ in targets}
    assert len(every_field) == len(dataclasses.fields(ExperimentConfig)) - 3 + len(dataclasses.fields(rsojax.RSOConfig)) + 4
    with pytest.raises(SystemExit):  # not among the flag's choices
        parse(["--workdir", "w", "--evaluator", "fast"])
    with pytest.raises(ValueError, match="^evaluator: 'fast' cannot search the MNIST network"):
        ExperimentConfig(evaluator="fast")
    with pytest.raises(UsageError, match="^--momentum: expected a value in"):
        parse(["--workdir", "w", "--momentum", "1.5"])


def test_progress_is_a_line_every_interval_when_not_a_terminal(capsys):
    progress = Progress(total=1000, done=100, every_s=3600.0)
    progress.last_line -= 3600  # an interval has passed
    progress.update(400, "cycle 1/2, stages_1/Conv_0/kernel")
    progress.update(500, "cycle 1/2, stages_1/Conv_0/kernel")  # within the interval: quiet
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cycle 1/2, stages_1/Conv_0/kernel: 400 of 1,000 weights (40.0%)" in lines[0]
    assert "elapsed, about " in lines[0] and lines[0].endswith(" left")
