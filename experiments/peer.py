"""RSO against evolution strategies (evosax OpenAI-ES, SNES) at an equal number of images forwarded.

    python experiments/peer.py --cycles 1 --train_subset 2000 --rso_batch_size 128 \
        --channels 4 --workdir runs/peer

Runs RSO with experiments/mnist.py into WORKDIR/rso, counts the images it forwarded (three
candidate losses per weight visit, each on --rso_batch_size images), gives each ES the same
number (generations of --population x --es_batch_size images) on the same network, data and
initial parameters, and writes WORKDIR/peer.md (a table) and WORKDIR/peer.png (accuracy
against images forwarded and wall time). Needs `pip install 'rsojax[peer]'`.
"""

import argparse
import json
import os

import mnist

import rsojax
from rsojax.peer import run_es
from rsojax.plots import plot_curves


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=1, help="RSO cycles; sets the budget")
    p.add_argument("--train_subset", type=int, default=2000)
    p.add_argument("--rso_batch_size", type=int, default=128)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--strategies", default="open_es,snes", help="comma-separated: open_es, snes")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--es_batch_size", type=int, default=128)
    p.add_argument("--sigma", type=float, default=0.02, help="ES search std (SNES: initial)")
    p.add_argument("--open_es_learning_rate", type=float, default=0.01, help="Adam on the OpenAI-ES mean")
    p.add_argument("--snes_learning_rate", type=float, default=1.0, help="SNES mean step")
    p.add_argument("--seed", type=int, default=72)
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", default=None)
    args = p.parse_args(argv)

    rso_dir = os.path.join(args.workdir, "rso")
    flags = ["--cycles", args.cycles, "--train_subset", args.train_subset, "--batch_size", args.rso_batch_size,
             "--channels", args.channels, "--evaluator", "cached", "--seed", args.seed, "--workdir", rso_dir]
    if args.data_dir:
        flags += ["--data_dir", args.data_dir]
    summary = mnist.main([str(f) for f in flags])
    with open(os.path.join(rso_dir, "metrics.jsonl")) as f:
        rso_records = [dict(r, images_forwarded=3 * args.rso_batch_size * r["weight_updates"]) for r in map(json.loads, f)]
    budget = rso_records[-1]["images_forwarded"]
    runs = {"RSO": rso_records}
    rows = [_row("RSO", f"batch {args.rso_batch_size}, {args.cycles} cycle(s)", summary["test_accuracy"], rso_records)]

    data = mnist.MNIST.load(args.data_dir, args.train_subset)
    model = rsojax.mnist_convnet(channels=args.channels)
    for name in args.strategies.split(","):
        lr = args.open_es_learning_rate if name == "open_es" else args.snes_learning_rate
        records = [step.record for step in run_es(
            model, data, strategy=name, population_size=args.population, batch_size=args.es_batch_size, images=budget,
            sigma=args.sigma, learning_rate=lr, seed=args.seed,
        )]
        with open(os.path.join(args.workdir, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        setting = f"pop. {args.population}, batch {args.es_batch_size}, sigma {args.sigma}, lr {lr}, {records[-1]['generation']} gen."
        runs[name] = records
        rows.append(_row(name, setting, records[-1]["test_accuracy"], records))

    table = "\n".join([
        f"MNIST, {args.channels}-channel network, first {args.train_subset or 60000} training images, full test set; "
        f"every method forwards at most {budget:,} images.",
        "",
        "| method | setting | test acc. (%) | best (%) | images forwarded | train time (s) |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    with open(os.path.join(args.workdir, "peer.md"), "w") as f:
        f.write(table + "\n")
    panels = (("images_forwarded", "images forwarded", "log"), ("wall_time_s", "wall time (s)", "linear"))
    plot_curves(runs, os.path.join(args.workdir, "peer.png"), title="MNIST: RSO vs evolution strategies", panels=panels)
    print(table)
    return runs


def _row(name, setting, final, records):
    best = max(r["test_accuracy"] for r in records)
    return (f"| {name} | {setting} | {100 * final:.2f} | {100 * best:.2f} | {records[-1]['images_forwarded']:,} | "
            f"{records[-1]['wall_time_s']:.0f} |")


if __name__ == "__main__":
    main()
