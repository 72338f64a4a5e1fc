"""RSO against optax SGD on the same network, data and budget (cycles = epochs).

    python experiments/compare.py --cycles 1 --train_subset 10000 --rso_batch_size 512 \
        --workdir runs/compare

Runs experiments/mnist.py for both optimizers into WORKDIR/rso and WORKDIR/sgd, then
writes WORKDIR/compare.md (a markdown table) and WORKDIR/compare.png (both curves).
"""

import argparse
import json
import os

import mnist

from rsojax.plots import plot_curves


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=1, help="RSO cycles and SGD epochs")
    p.add_argument("--train_subset", type=int, default=10000)
    p.add_argument("--rso_batch_size", type=int, default=512)
    p.add_argument("--sgd_batch_size", type=int, default=128)
    p.add_argument("--seed", type=int, default=72)
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--channels", type=int, default=16)
    args, passthrough = p.parse_known_args(argv)

    runs, rows = {}, []
    for optimizer, batch_size in (("rso", args.rso_batch_size), ("sgd", args.sgd_batch_size)):
        workdir = os.path.join(args.workdir, optimizer)
        common = ["--cycles", args.cycles, "--train_subset", args.train_subset, "--seed", args.seed, "--channels", args.channels]
        flags = ["--optimizer", optimizer, "--batch_size", batch_size, "--workdir", workdir, *common]
        if args.data_dir:
            flags += ["--data_dir", args.data_dir]
        summary = mnist.main([str(f) for f in flags] + (passthrough if optimizer == "rso" else []))
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            runs[optimizer.upper()] = [json.loads(line) for line in f]
        rows.append(
            f"| {optimizer.upper()} | {args.cycles} | {batch_size} | {100 * summary['test_accuracy']:.2f} | "
            f"{100 * summary['best_test_accuracy']:.2f} | {summary['weight_updates']:,} | {summary['wall_time_s']:.0f} |"
        )

    table = "\n".join(
        [
            f"MNIST, first {args.train_subset or 60000} training images, full test set, {runs['RSO'][-1]['cycle'] + 1} "
            "RSO cycles vs as many SGD epochs.",
            "",
            "| optimizer | cycles/epochs | batch | test acc. (%) | best (%) | weight updates | train time (s) |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    with open(os.path.join(args.workdir, "compare.md"), "w") as f:
        f.write(table + "\n")
    plot_curves(runs, os.path.join(args.workdir, "compare.png"), title="MNIST: RSO vs SGD")
    print(table)


if __name__ == "__main__":
    main()
