"""experiments/mnist.py as a long run on a shared machine: killed, preempted, run twice, its
checkpoints damaged, its disk full, it resumes to the result of the run that was never
interrupted (the session's `compared` run) or says in one line why it cannot.

One run stopped by SIGTERM (`stopped`) is the starting point of the tests of the faults that
strike a run already under way: each copies it and resumes from it.
"""

import contextlib
import io
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, comparable, script, tiny_argv

from rsojax import experiment
from rsojax.checkpoint import Checkpointer
from rsojax.experiment import UsageError, WorkdirLock
from rsojax.records import read_records
from rsojax.rso import RSO

# Runs experiments/mnist.py with TensorFlow unimportable, killing itself with SIGKILL when it
# enters checkpoint save number KILL_AT: after a record was appended to metrics.jsonl and
# before the checkpoint holding it is written.
RUNNER = """
import os, runpy, signal, sys
sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None
from rsojax.checkpoint import Checkpointer
kill_at, saves, save = int(sys.argv[1]), [0], Checkpointer.save
def save_or_die(self, *args):
    saves[0] += 1
    if saves[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    save(self, *args)
Checkpointer.save = save_or_die
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_run_resumes_to_the_same_result(compared, mnist_npz, tmp_path, capsys):
    workdir = str(tmp_path / "killed")
    argv = tiny_argv(mnist_npz, workdir, "rso", "--checkpoint_every_s", "0")
    # A checkpoint after every chunk of 8 weights: saves 1-3 in the dense layer (20 weights), 4-8 in
    # conv 6 (36). Save 8 would hold conv 6's record, which metrics.jsonl already has.
    kill_at = 8
    # x64 as in this process (conftest), where the run resumes: the losses are then summed alike.
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(kill_at), os.path.join(ROOT, "experiments", "mnist.py"), *argv],
                          capture_output=True, text=True, timeout=600, env=os.environ | {"JAX_ENABLE_X64": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    records = read_records(workdir)
    assert [r["layer"] for r in records] == ["stages_6/Dense_0/kernel", "stages_5/Conv_0/kernel"]
    assert not os.path.exists(os.path.join(workdir, "summary.json"))

    script("mnist").main(argv)
    assert "resuming after 52 weight updates" in capsys.readouterr().err  # save 7: 20 dense + 32 conv-6 weights
    assert comparable(workdir) == comparable(os.path.join(compared, "rso"))


def run_cli(argv) -> tuple[int, str]:
    """experiments/mnist.py's exit status and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = experiment.cli(lambda: script("mnist").main(argv), "mnist.py")
    return status, err.getvalue()


def last_line(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@contextlib.contextmanager
def patched(cls, name, wrapper):
    original = getattr(cls, name)
    setattr(cls, name, wrapper(original))
    try:
        yield
    finally:
        setattr(cls, name, original)


def steps(workdir) -> list[int]:
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())


# A cycle of the tiny network visits 218 weights (dense 20, five convs of 36, the first conv 18)
# in 31 compiled chunks of 8 (the last of each layer shorter), each layer ending with a record and
# a checkpoint. The run stops in the second cycle, so that a resumed run has less left to do:
# after 31 + 5 chunks, inside conv 6 (the dense layer's record and checkpoint at 218 + 20), at
# 218 + 36 weight updates. The three newest checkpoints are then those three.
CYCLE = 218
SIGNAL_AT, BEFORE, STOPPED_AT = 31 + 5, CYCLE + 20, CYCLE + 36


@pytest.fixture(scope="module")
def stopped(mnist_npz, tmp_path_factory):
    """A run that SIGTERM reached while it computed chunk SIGNAL_AT: its workdir, exit status and
    stderr, what a second lock on its workdir was told while it ran, and whether the SIGTERM
    handler after it is the one before it."""
    workdir = str(tmp_path_factory.mktemp("stopped") / "run")
    chunks, second_lock = [0], []

    def signal_during_a_chunk(chunks_of):
        def wrapper(self, *args, **kwargs):
            for item in chunks_of(self, *args, **kwargs):
                chunks[0] += 1
                if chunks[0] == SIGNAL_AT:
                    os.kill(os.getpid(), signal.SIGTERM)
                    try:
                        WorkdirLock(workdir).acquire()
                    except UsageError as e:
                        second_lock.append(str(e))
                yield item

        return wrapper

    def unhandled(signum, frame):  # SIGTERM must not end the test process
        raise AssertionError("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with patched(RSO, "chunks", signal_during_a_chunk):
            status, err = run_cli(tiny_argv(mnist_npz, workdir, "rso", "--checkpoint_every_s", "3600"))
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return workdir, status, err, second_lock, handler_after is unhandled


def resumable(stopped, tmp_path) -> str:
    """A copy of the stopped run's workdir."""
    workdir = str(tmp_path / "run")
    shutil.copytree(stopped[0], workdir)
    return workdir


def test_sigterm_stops_at_the_chunk_boundary_with_a_checkpoint_and_resumes(stopped, compared, mnist_npz, tmp_path):
    original, status, err, second_lock, handler_restored = stopped
    assert status == experiment.EXIT_PREEMPTED == 75
    assert last_line(err) == (
        f"mnist.py: stopped by SIGTERM at cycle 2/2, stages_5/Conv_0/kernel, after a checkpoint of {STOPPED_AT} "
        f"weight updates in {original}; rerun the same command to resume"
    )
    assert steps(original) == [CYCLE, BEFORE, STOPPED_AT]  # two layers' records, then the chunk the signal came in
    assert [r["layer"] for r in read_records(original)][-2:] == ["stages_0/Conv_0/kernel", "stages_6/Dense_0/kernel"]
    assert not os.path.exists(os.path.join(original, "summary.json"))
    assert not os.path.exists(os.path.join(original, "lock"))  # released
    assert len(second_lock) == 1 and f"is in use by another run (pid {os.getpid()} on {socket.gethostname()}, since" in second_lock[0]
    assert handler_restored  # the run's signal handlers end with it

    workdir = resumable(stopped, tmp_path)
    status, err = run_cli(tiny_argv(mnist_npz, workdir, "rso"))
    assert status == 0 and f"resuming after {STOPPED_AT} weight updates" in err
    assert comparable(workdir) == comparable(os.path.join(compared, "rso"))


def test_sigterm_before_training_stops_before_the_first_chunk(stopped, mnist_npz, tmp_path):
    """A signal while the data loads or the checkpoint is read: nothing is computed or written."""
    workdir = resumable(stopped, tmp_path)
    records = Path(workdir, "metrics.jsonl").read_text()

    def signal_while_reading(restore):
        def wrapper(self, *args):
            os.kill(os.getpid(), signal.SIGTERM)
            return restore(self, *args)

        return wrapper

    with patched(Checkpointer, "restore", signal_while_reading):
        status, err = run_cli(tiny_argv(mnist_npz, workdir, "rso"))
    assert status == 75 and last_line(err) == (
        "mnist.py: stopped by SIGTERM before training, at cycle 2/2, stages_5/Conv_0/kernel; rerun the same command to resume"
    )
    assert steps(workdir) == [CYCLE, BEFORE, STOPPED_AT] and Path(workdir, "metrics.jsonl").read_text() == records
    assert not os.path.exists(os.path.join(workdir, "lock"))


def test_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(stopped, compared, mnist_npz, tmp_path):
    """One file of the newest step truncated, as a disk or a copy leaves it: the rerun resumes from
    the step before, and saves the damaged step's number again (a checkpoint after every chunk)."""
    workdir = resumable(stopped, tmp_path)
    newest = os.path.join(workdir, "checkpoints", str(STOPPED_AT))
    files = [os.path.join(root, name) for root, _, names in os.walk(newest) for name in names]
    largest = max(files, key=os.path.getsize)
    os.truncate(largest, os.path.getsize(largest) // 2)

    status, err = run_cli(tiny_argv(mnist_npz, workdir, "rso", "--checkpoint_every_s", "0"))
    assert status == 0 and "Traceback" not in err
    (aside,) = [name for name in os.listdir(os.path.join(workdir, "checkpoints")) if ".damaged-" in name]
    assert aside.startswith(f"{STOPPED_AT}.damaged-")
    assert f"checkpoint {STOPPED_AT} cannot be restored" in err and f"set aside as {os.path.join(workdir, 'checkpoints', aside)}" in err
    assert os.path.getsize(largest.replace(newest, os.path.join(workdir, "checkpoints", aside))) > 0  # kept, not deleted
    assert f"resuming after {BEFORE} weight updates" in err
    assert comparable(workdir) == comparable(os.path.join(compared, "rso"))


# The failed reads' callbacks that TensorStore completes afterwards print no tracebacks either.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_no_restorable_checkpoint_is_one_line_saying_what_to_do(stopped, mnist_npz, tmp_path):
    workdir = resumable(stopped, tmp_path)
    for step in steps(workdir):
        os.remove(os.path.join(workdir, "checkpoints", str(step), "state", "manifest.ocdbt"))
    status, err = run_cli(tiny_argv(mnist_npz, workdir, "rso"))
    checkpoints = os.path.join(workdir, "checkpoints")
    assert status == 2
    assert last_line(err).startswith(
        f"mnist.py: error: --workdir: no checkpoint in {checkpoints} can be restored (steps {STOPPED_AT}, {BEFORE}, {CYCLE}; "
        "the newest: ValueError: "
    )
    assert f"move that directory aside (mv {checkpoints} {checkpoints}.damaged), or use a new --workdir" in err
    assert steps(workdir) == [CYCLE, BEFORE, STOPPED_AT]  # nothing set aside: the user decides


def test_half_written_last_record_is_repaired(stopped, compared, mnist_npz, tmp_path):
    """kill -9 during a write of metrics.jsonl leaves half a line: the rerun writes the records again
    from the checkpoint, so that they are the uninterrupted run's, none twice, none missing."""
    workdir = resumable(stopped, tmp_path)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"cycle": 0, "progress": 0.2857, "layer": "stages_5/Co')
    status, err = run_cli(tiny_argv(mnist_npz, workdir, "rso"))
    assert status == 0, err
    assert comparable(workdir) == comparable(os.path.join(compared, "rso"))


def test_full_disk_at_each_write_stops_in_one_line_and_the_run_resumes(stopped, compared, mnist_npz, tmp_path):
    """The disk refuses, in turn, a checkpoint, a record, the curves and the summary: each stops the
    run with one line naming the file and the OS error, the newest checkpoint intact; once the
    space is back, the same command ends with the uninterrupted run's parameters and records.

    Records, curves and summary are written into /dev/full (every write: ENOSPC); a checkpoint
    under a file size limit of 0 bytes (every write: EFBIG), as TensorStore writes it."""
    workdir = resumable(stopped, tmp_path)
    argv = tiny_argv(mnist_npz, workdir, "rso")
    checkpoints = os.path.join(workdir, "checkpoints")

    def no_space_for_the_first(save):
        calls = [0]

        def wrapper(self, *args):
            calls[0] += 1
            if calls[0] > 1:
                return save(self, *args)
            limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, limits[1]))
            try:
                return save(self, *args)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, limits)
                signal.signal(signal.SIGXFSZ, handler)

        return wrapper

    with patched(Checkpointer, "save", no_space_for_the_first):
        status, err = run_cli(argv)
    assert status == 74 and last_line(err) == (
        f"mnist.py: error: cannot write {checkpoints}/{STOPPED_AT + 20}: File too large; the newest checkpoint is intact: "
        "fix this (free space, for example) and rerun the same command to resume"
    )
    assert steps(workdir) == [CYCLE, BEFORE, STOPPED_AT]

    metrics = os.path.join(workdir, "metrics.jsonl")

    def full_after_the_first(save):  # conv 6's record and checkpoint are written, conv 5's record is not
        def wrapper(self, *args):
            save(self, *args)
            if not os.path.islink(metrics):
                os.remove(metrics)
                os.symlink("/dev/full", metrics)

        return wrapper

    with patched(Checkpointer, "save", full_after_the_first):
        status, err = run_cli(argv)
    assert status == 74 and last_line(err).startswith(f"mnist.py: error: cannot write {metrics}: No space left on device;")
    assert steps(workdir) == [BEFORE, STOPPED_AT, STOPPED_AT + 20]
    os.remove(metrics)  # space is back; metrics.jsonl is gone altogether

    for name in ("curves.png", "summary.json.tmp"):  # summary.json is written whole to its .tmp, then renamed
        os.symlink("/dev/full", os.path.join(workdir, name))
        status, err = run_cli(argv)
        target = os.path.join(workdir, name.removesuffix(".tmp"))
        assert status == 74 and last_line(err).startswith(f"mnist.py: error: cannot write {target}: No space left on device;")
        assert not os.path.exists(os.path.join(workdir, "summary.json"))
        if name == "curves.png":
            os.remove(target)
        assert not os.path.lexists(os.path.join(workdir, "summary.json.tmp"))  # a failed summary leaves no .tmp
    assert steps(workdir)[-1] == 2 * CYCLE  # the end of the run, not yet marked finished

    status, err = run_cli(argv)
    assert status == 0, err
    assert comparable(workdir) == comparable(os.path.join(compared, "rso"))


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_finished_run_writes_a_damaged_or_missing_summary_again(compared, mnist_npz, tmp_path, damage):
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(compared, "sgd"), workdir)
    summary = os.path.join(workdir, "summary.json")
    expected = json.loads(Path(summary).read_text())
    if damage == "missing":
        os.remove(summary)
    else:
        os.truncate(summary, 100)
    status, err = run_cli(tiny_argv(mnist_npz, workdir, "sgd", "--tensorboard"))  # as `compared` ran it
    assert status == 0 and "Traceback" not in err
    assert (f"{summary} cannot be read" in err) == (damage == "truncated")
    assert json.loads(Path(summary).read_text()) == expected  # the final checkpoint and records give it whole
    assert steps(workdir) == steps(os.path.join(compared, "sgd"))  # the final checkpoint is not written again


def test_unreadable_config_is_one_line(compared, mnist_npz, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(compared, "sgd"), workdir)
    config = os.path.join(workdir, "config.json")
    os.truncate(config, 10)
    status, err = run_cli(tiny_argv(mnist_npz, workdir, "sgd"))
    assert status == 2 and last_line(err).startswith(f"mnist.py: error: --workdir: {config} cannot be read (JSONDecodeError: ")
    assert last_line(err).endswith("it holds the settings of the run to resume: write them back, or use a new --workdir")


def test_ctrl_c_asks_to_stop_and_a_second_ctrl_c_interrupts_at_once():
    from rsojax.experiment.preemption import GO_ON, INTERRUPT, StopSignals

    previous = signal.getsignal(signal.SIGINT)
    with StopSignals() as signals:
        assert signals.agree() == GO_ON
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.agree() == INTERRUPT and signals.name(INTERRUPT) == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_schedulers_signal_asks_to_stop_and_a_repeated_one_changes_nothing(signum):
    """SIGTERM (preemption) and SIGUSR1 (Slurm's --signal, ahead of a time limit) both mean
    "preempted": exit status 75. A second one must not break the checkpoint on its way."""
    from rsojax.experiment.preemption import PREEMPT, StopSignals

    previous = signal.signal(signum, lambda *_: None)  # a signal StopSignals misses must not end the tests
    try:
        with StopSignals() as signals:
            os.kill(os.getpid(), signum)
            os.kill(os.getpid(), signum)
            assert signals.agree() == PREEMPT and signals.name(PREEMPT) == signal.Signals(signum).name
    finally:
        signal.signal(signum, previous)


def test_signals_are_left_alone_outside_the_main_thread():
    """Python installs signal handlers in the main thread only: a run in another thread (a
    notebook's worker, a server) trains without them."""
    import threading

    from rsojax.experiment.preemption import GO_ON, StopSignals

    decisions = []

    def run():
        with StopSignals() as signals:
            decisions.append(signals.agree())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert decisions == [GO_ON]


# Holds the lock of the workdir argv[1] until killed.
HOLDER = """
import sys, time
from rsojax.experiment import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_second_run_is_refused_while_the_first_holds_the_workdir_and_not_after_it_died(compared, mnist_npz, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(compared, "sgd"), workdir)
    argv = tiny_argv(mnist_npz, workdir, "sgd")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], stdout=subprocess.PIPE, text=True,
                              env=os.environ | {"PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline() == "locked\n"
        before = {name: os.stat(os.path.join(workdir, name)).st_mtime_ns for name in os.listdir(workdir)}
        status, err = run_cli(argv)
        assert status == 2 and last_line(err).startswith(
            f"mnist.py: error: --workdir: {workdir} is in use by another run (pid {holder.pid} on {socket.gethostname()}, since "
        )
        assert {name: os.stat(os.path.join(workdir, name)).st_mtime_ns for name in os.listdir(workdir)} == before
    finally:
        holder.kill()  # SIGKILL: the holder leaves its lock file behind, and the kernel its lock
        holder.wait()
    assert os.path.exists(os.path.join(workdir, "lock"))
    status, err = run_cli(argv)
    assert status == 0 and "has finished already" in err
    assert not os.path.exists(os.path.join(workdir, "lock"))


# Two processes of one run at three chunk boundaries: process 1 receives SIGTERM before the
# second, process 0 fails to write before the third. Prints the decisions of argv[1]'s process.
AGREEMENT = """
import json, os, signal, sys
from rsojax import sharding
coordinator, process = sys.argv[1], int(sys.argv[2])
sharding.distributed_init(coordinator, 2, process)
from rsojax.experiment.preemption import StopSignals
decisions = []
with StopSignals() as signals:
    for boundary in range(3):
        if process == 1 and boundary == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        decisions.append(signals.agree(failed=process == 0 and boundary == 2))
print(json.dumps(decisions))
"""


def test_every_process_takes_the_same_decision_at_each_chunk_boundary():
    from rsojax.experiment.preemption import FAILED, GO_ON, PREEMPT

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", AGREEMENT, f"localhost:{port}", str(i)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": ROOT})
        for i in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == [GO_ON, PREEMPT, FAILED]
