"""experiments/mnist.py as a long run: killed with SIGKILL at a known point, it resumes to the
result of the run that was never interrupted, in a process that has no TensorFlow."""

import os
import signal
import subprocess
import sys

from conftest import ROOT, comparable, script, tiny_argv

from rsojax.records import read_records

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
