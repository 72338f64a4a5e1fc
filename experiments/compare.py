"""RSO against optax SGD on the same network, data and budget (cycles = epochs).

    python experiments/compare.py --cycles 1 --train_subset 10000 --rso_batch_size 512 \
        --workdir runs/compare

Trains both with `rsojax.experiment.train_and_evaluate` into WORKDIR/rso and WORKDIR/sgd
(each resumable like experiments/mnist.py), then writes WORKDIR/compare.md (a markdown table)
and WORKDIR/compare.png (both curves). Flags it does not know go to both runs (for example
--data FILE.npz, --kernels_only).
"""

import argparse
import os
import sys

from rsojax import experiment
from rsojax.plots import plot_curves
from rsojax.records import RESULT_COLUMNS, markdown_table, read_records, result_cells


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=1, help="RSO cycles and SGD epochs [default: 1]")
    p.add_argument("--train_subset", type=int, default=10000, help="[default: 10000]")
    p.add_argument("--rso_batch_size", type=int, default=512, help="[default: 512]")
    p.add_argument("--sgd_batch_size", type=int, default=128, help="[default: 128]")
    p.add_argument("--workdir", required=True)
    args, passthrough = p.parse_known_args(argv)

    runs, rows = {}, []
    for optimizer, batch_size in (("rso", args.rso_batch_size), ("sgd", args.sgd_batch_size)):
        flags = ["--optimizer", optimizer, "--batch_size", batch_size, "--cycles", args.cycles,
                 "--train_subset", args.train_subset, "--workdir", os.path.join(args.workdir, optimizer)]
        config, workdir = experiment.parse_flags([*map(str, flags), *passthrough], "mnist", prog="compare.py")
        experiment.train_and_evaluate(config, workdir)
        runs[optimizer.upper()] = read_records(workdir)
        rows.append([optimizer.upper(), args.cycles, batch_size, *result_cells(runs[optimizer.upper()])])

    caption = (
        f"MNIST, first {args.train_subset or 60000} training images, full test set, {args.cycles} RSO cycle(s) "
        "vs as many SGD epochs."
    )
    table = markdown_table(["optimizer", "cycles/epochs", "batch", *RESULT_COLUMNS], rows, caption)
    path = os.path.join(args.workdir, "compare.md")
    with experiment.writing(path), open(path, "w") as f:
        f.write(table + "\n")
    path = os.path.join(args.workdir, "compare.png")
    with experiment.writing(path):
        plot_curves(runs, path, title="MNIST: RSO vs SGD")
    print(table)
    return table


if __name__ == "__main__":
    sys.exit(experiment.cli(main, "compare.py"))
