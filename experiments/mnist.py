"""Train the paper's MNIST network with RSO, or with the optax SGD baseline.

    python experiments/mnist.py --workdir runs/paper        # the paper's protocol (GPU work)
    python experiments/mnist.py --cycles 1 --batch_size 512 --train_subset 10000 --workdir runs/rso
    python experiments/mnist.py --optimizer sgd --cycles 1 --workdir runs/sgd

The data comes from TFDS (--data_dir or $TFDS_DATA_DIR; --download fetches it) or from a
.npz file (--data FILE.npz, no TensorFlow needed). The paper's variants are flags:
--perturbation, --input_first, --granularity. Every flag is a field of
`rsojax.experiment.ExperimentConfig` (or of its `RSOConfig`), which holds the defaults.

Writes WORKDIR/config.json, metrics.jsonl (a record per RSO layer sweep or SGD epoch),
checkpoints/, then summary.json and curves.png. Rerunning the same command resumes where the
run stopped and ends exactly as an uninterrupted run would; a finished run prints its result.

--seeds 0-7 trains 8 RSO runs (one per sampling seed) in one program and one workdir;
--sweep sigma_scale=0.5,1,2 runs each value with every seed (docs/many-runs.md):

    python experiments/mnist.py --cycles 1 --batch_size 512 --train_subset 10000 \\
        --sweep sigma_scale=0.5,1,2 --seeds 0-3 --workdir runs/sigma

Each minibatch is split over --devices devices (default: all). With --distributed, one process
per host joins a multi-process run and only process 0 writes:

    python experiments/mnist.py --distributed --coordinator_address host0:1234 \\
        --num_processes 2 --process_id $RANK --workdir runs/rso   # on each of 2 hosts
"""

import sys

from rsojax import experiment


def main(argv=None) -> dict:
    """Trains as the flags say; returns the run's summary (raises `experiment.UsageError`)."""
    config, workdir = experiment.parse_flags(argv, "mnist", prog="mnist.py", description=__doc__)
    return experiment.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    sys.exit(experiment.cli(main, "mnist.py"))
