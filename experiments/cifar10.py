"""Train the paper's 10-layer CIFAR-10 network with RSO, or with the optax SGD baseline.

    python experiments/cifar10.py --workdir runs/cifar10_paper     # the paper's protocol: 500 cycles
    python experiments/cifar10.py --cycles 1 --batch_size 512 --train_subset 10000 --workdir runs/cifar10_rso
    python experiments/cifar10.py --optimizer sgd --cycles 50 --workdir runs/cifar10_sgd

The flags, files and resumption of experiments/mnist.py, with the CIFAR-10 task of
`rsojax.experiment.TASKS`: the residual network `rsojax.cifar10_resnet`; images scaled to
[0, 1] minus the per-channel training mean. The data is
TFDS cifar10/3.0.2 (--data_dir or $TFDS_DATA_DIR; --download fetches it, about 160 MB) or
a .npz file (--data, Keras' cifar10 layout).
"""

import sys

from rsojax import experiment


def main(argv=None) -> dict:
    """Trains as the flags say; returns the run's summary (raises `experiment.UsageError`)."""
    config, workdir = experiment.parse_flags(argv, "cifar10", prog="cifar10.py", description=__doc__)
    return experiment.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    sys.exit(experiment.cli(main, "cifar10.py"))
