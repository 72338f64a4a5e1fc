"""Train the paper's 10-layer CIFAR-10 network with RSO or with the optax SGD baseline.

    python experiments/cifar10.py --optimizer rso --cycles 1 --batch_size 512 \
        --train_subset 10000 --workdir runs/cifar10_rso

The same flags and output files as experiments/mnist.py (metrics.jsonl, summary.json,
curves.png, config.json, checkpoints/, resumable), whose `main` it runs with the CIFAR-10
task: the residual network `rsojax.models.cifar10_resnet`, searched with the Generic
evaluator; images scaled to [0, 1] minus the per-channel training mean; paper defaults
500 cycles, batch 5000. CIFAR-10 comes from TFDS (cifar10/3.0.2) in --data_dir or
$TFDS_DATA_DIR.
"""

import sys

import mnist


def main(argv=None):
    return mnist.main(argv, mnist.CIFAR10)


if __name__ == "__main__":
    sys.exit(mnist.cli(task=mnist.CIFAR10))
