"""RSO against evolution strategies (evosax OpenAI-ES, SNES) at an equal number of images forwarded.

    python experiments/peer.py --cycles 1 --train_subset 2000 --rso_batch_size 128 \
        --channels 4 --workdir runs/peer

Trains RSO with `rsojax.experiment.train_and_evaluate` into WORKDIR/rso, counts the images it
forwarded (three candidate losses per weight visit, each on --rso_batch_size images), gives
each ES the same number (generations of --population x --es_batch_size images) on the same
network, data and initial parameters, and writes WORKDIR/peer.md (a table) and WORKDIR/peer.png
(accuracy against images forwarded and wall time). Flags it does not know go to the RSO run
and choose the data (for example --data FILE.npz). Needs `pip install 'rsojax[peer]'`.

With --seeds (and --init_seeds), RSO trains one run per seed in one program and each ES one
run per seed after another (WORKDIR/<strategy>.jsonl holds them all, each record with its
run's labels); the table gives the accuracies as mean ± standard deviation over the seeds.
"""

import argparse
import os
import sys

from rsojax import experiment
from rsojax.peer import run_es
from rsojax.plots import plot_curves, plot_runs
from rsojax.records import RESULT_COLUMNS, markdown_table, read_records, result_rows, runs_by_sweep, write_records


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
    rows = [[name, f"batch {args.rso_batch_size}, {args.cycles} cycle(s)", *cells]
            for name, *cells in result_rows("RSO", rso, "images_forwarded")]

    data, model = experiment.load_data(config), experiment.build_model(config)
    # One ES run per seed (and its init seed), as RSO's runs, with their labels.
    seeds = [{"seed": config.seed, "init_seed": config.init_seed}]
    if config.seeds:
        init_seeds = config.init_seeds or (config.init_seed,) * len(config.seeds)
        seeds = [{"run": k, "seed": s, "init_seed": i} for k, (s, i) in enumerate(zip(config.seeds, init_seeds))]
    for name in args.strategies.split(","):
        lr = args.open_es_learning_rate if name == "open_es" else args.snes_learning_rate
        records = []
        for labels in seeds:
            before = records[-1]["wall_time_s"] if records else 0.0  # a record's time counts the runs before it
            records += [labels | step.record | {"wall_time_s": before + step.record["wall_time_s"]} for step in run_es(
                model, data, strategy=name, population_size=args.population, batch_size=args.es_batch_size, images=budget,
                sigma=args.sigma, learning_rate=lr, seed=labels["seed"], init_seed=labels["init_seed"],
            )]
        if not config.seeds:
            records = [{k: v for k, v in r.items() if k not in ("seed", "init_seed")} for r in records]
        write_records(os.path.join(args.workdir, f"{name}.jsonl"), records)
        runs[name] = records
        setting = f"pop. {args.population}, batch {args.es_batch_size}, sigma {args.sigma}, lr {lr}, {records[-1]['generation']} gen."
        rows += [[row[0], setting, *row[1:]] for row in result_rows(name, records, "images_forwarded")]

    caption = (
        f"MNIST, {args.channels}-channel network, first {args.train_subset or 60000} training images, full test set; "
        f"every method forwards at most {budget:,} images."
    )
    if config.runs is not None:
        caption += " Accuracies: mean ± standard deviation over the runs (RSO: per swept value)."
    header = ["method", "setting", *RESULT_COLUMNS[:2], "images forwarded", RESULT_COLUMNS[3]]
    table = markdown_table(header, rows, caption)
    with open(os.path.join(args.workdir, "peer.md"), "w") as f:
        f.write(table + "\n")
    panels = (("images_forwarded", "images forwarded", "log"), ("wall_time_s", "wall time (s)", "linear"))
    path, title = os.path.join(args.workdir, "peer.png"), "MNIST: RSO vs evolution strategies"
    if config.runs is None:
        plot_curves(runs, path, title=title, panels=panels)
    else:
        plot_runs({label: group for name, records in runs.items() for label, group in runs_by_sweep(records, name).items()},
                  path, title=title, panels=panels)
    print(table)
    return runs


if __name__ == "__main__":
    sys.exit(experiment.cli(main, "peer.py"))
