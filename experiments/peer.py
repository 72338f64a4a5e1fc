"""RSO against evolution strategies (evosax OpenAI-ES, SNES) at an equal number of images forwarded.

    python experiments/peer.py --cycles 1 --train_subset 2000 --rso_batch_size 128 \
        --channels 4 --workdir runs/peer

Trains RSO with `rsojax.experiment.train_and_evaluate` into WORKDIR/rso, counts the images it
forwarded (three candidate losses per weight visit, each on --rso_batch_size images), gives
each ES the same number (generations of --population x --es_batch_size images) on the same
network, data and initial parameters, and writes WORKDIR/peer.md (a table) and WORKDIR/peer.png
(accuracy against images forwarded and wall time). Flags it does not know go to the RSO run
and choose the data (for example --data FILE.npz). Needs `pip install 'rsojax[peer]'`.
"""

import argparse
import os
import sys

from rsojax import experiment
from rsojax.peer import run_es
from rsojax.plots import plot_curves
from rsojax.records import RESULT_COLUMNS, markdown_table, read_records, result_cells, write_records


def main(argv=None) -> dict:
    """Returns {method: records}."""
    p = argparse.ArgumentParser(prog="peer.py", description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=1, help="RSO cycles; sets the budget [default: 1]")
    p.add_argument("--train_subset", type=int, default=2000, help="[default: 2000]")
    p.add_argument("--rso_batch_size", type=int, default=128, help="[default: 128]")
    p.add_argument("--channels", type=int, default=4, help="[default: 4]")
    p.add_argument("--strategies", default="open_es,snes", help="comma-separated: open_es, snes [default: open_es,snes]")
    p.add_argument("--population", type=int, default=64, help="[default: 64]")
    p.add_argument("--es_batch_size", type=int, default=128, help="[default: 128]")
    p.add_argument("--sigma", type=float, default=0.02, help="ES search std (SNES: initial) [default: 0.02]")
    p.add_argument("--open_es_learning_rate", type=float, default=0.01, help="Adam on the OpenAI-ES mean [default: 0.01]")
    p.add_argument("--snes_learning_rate", type=float, default=1.0, help="SNES mean step [default: 1.0]")
    p.add_argument("--workdir", required=True)
    args, passthrough = p.parse_known_args(argv)

    flags = ["--cycles", args.cycles, "--train_subset", args.train_subset, "--batch_size", args.rso_batch_size,
             "--channels", args.channels, "--evaluator", "cached", "--workdir", os.path.join(args.workdir, "rso")]
    config, rso_dir = experiment.parse_flags([*map(str, flags), *passthrough], "mnist", prog="peer.py")
    experiment.train_and_evaluate(config, rso_dir)
    rso = [dict(r, images_forwarded=3 * args.rso_batch_size * r["weight_updates"]) for r in read_records(rso_dir)]
    budget = rso[-1]["images_forwarded"]
    runs = {"RSO": rso}
    rows = [["RSO", f"batch {args.rso_batch_size}, {args.cycles} cycle(s)", *result_cells(rso, "images_forwarded")]]

    data, model = experiment.load_data(config), experiment.build_model(config)
    for name in args.strategies.split(","):
        lr = args.open_es_learning_rate if name == "open_es" else args.snes_learning_rate
        records = [step.record for step in run_es(
            model, data, strategy=name, population_size=args.population, batch_size=args.es_batch_size, images=budget,
            sigma=args.sigma, learning_rate=lr, seed=config.seed, init_seed=config.init_seed,
        )]
        write_records(os.path.join(args.workdir, f"{name}.jsonl"), records)
        runs[name] = records
        setting = f"pop. {args.population}, batch {args.es_batch_size}, sigma {args.sigma}, lr {lr}, {records[-1]['generation']} gen."
        rows.append([name, setting, *result_cells(records, "images_forwarded")])

    caption = (
        f"MNIST, {args.channels}-channel network, first {args.train_subset or 60000} training images, full test set; "
        f"every method forwards at most {budget:,} images."
    )
    header = ["method", "setting", *RESULT_COLUMNS[:2], "images forwarded", RESULT_COLUMNS[3]]
    table = markdown_table(header, rows, caption)
    with open(os.path.join(args.workdir, "peer.md"), "w") as f:
        f.write(table + "\n")
    panels = (("images_forwarded", "images forwarded", "log"), ("wall_time_s", "wall time (s)", "linear"))
    plot_curves(runs, os.path.join(args.workdir, "peer.png"), title="MNIST: RSO vs evolution strategies", panels=panels)
    print(table)
    return runs


if __name__ == "__main__":
    sys.exit(experiment.cli(main, "peer.py"))
