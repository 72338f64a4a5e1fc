"""RSO against optax SGD on the same network, data and budget (cycles = epochs).

    python experiments/compare.py --cycles 1 --train_subset 10000 --rso_batch_size 512 \
        --workdir runs/compare

Trains both with `rsojax.experiment.train_and_evaluate` into WORKDIR/rso and WORKDIR/sgd
(each resumable like experiments/mnist.py), then writes WORKDIR/compare.md (a markdown table)
and WORKDIR/compare.png (both curves). Flags it does not know go to both runs (for example
--data FILE.npz, --kernels_only).

With --seeds (and --init_seeds), RSO trains one run per seed in one program (WORKDIR/rso) and
SGD one run per seed after another (WORKDIR/sgd/seed_<k>, the k-th seed); --sweep goes to RSO
only (a row per swept value). The table then gives the accuracies as mean ± standard deviation
over the runs (docs/many-runs.md).
"""

import argparse
import os
import sys

from rsojax import experiment
from rsojax.plots import plot_curves, plot_runs
from rsojax.records import RESULT_COLUMNS, markdown_table, read_records, result_rows, runs_by_sweep


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=1, help="RSO cycles and SGD epochs [default: 1]")
    p.add_argument("--train_subset", type=int, default=10000, help="[default: 10000]")
    p.add_argument("--rso_batch_size", type=int, default=512, help="[default: 512]")
    p.add_argument("--sgd_batch_size", type=int, default=128, help="[default: 128]")
    p.add_argument("--seeds", help="sampling seeds, one run of each optimizer per seed (as mnist.py's --seeds)")
    p.add_argument("--init_seeds", help="with --seeds: each run's initialisation seed (as mnist.py's)")
    p.add_argument("--sweep", help="NAME=VALUES: RSO's runs sweep a setting (as mnist.py's; SGD does not)")
    p.add_argument("--workdir", required=True)
    args, passthrough = p.parse_known_args(argv)
    rso_runs = [f"--{name}={value}" for name in ("seeds", "init_seeds", "sweep") if (value := getattr(args, name))]

    common = ["--cycles", args.cycles, "--train_subset", args.train_subset]
    rso_dir = os.path.join(args.workdir, "rso")
    config, rso_dir = experiment.parse_flags(
        [*map(str, ["--optimizer", "rso", "--batch_size", args.rso_batch_size, *common, "--workdir", rso_dir]),
         *rso_runs, *passthrough], "mnist", prog="compare.py")
    sgd = [(config.seed, config.init_seed, os.path.join(args.workdir, "sgd"))]
    if config.seeds:  # SGD trains one run at a time: one workdir per seed
        init_seeds = config.init_seeds or (config.init_seed,) * len(config.seeds)
        sgd = [(s, i, os.path.join(args.workdir, "sgd", f"seed_{k}")) for k, (s, i) in
               enumerate(zip(config.seeds, init_seeds))]
    sgd_configs = []
    for seed, init_seed, workdir in sgd:  # every config is checked before any run starts
        flags = ["--optimizer", "sgd", "--batch_size", args.sgd_batch_size, *common, "--workdir", workdir]
        seeds = ["--seed", seed] if seed != config.seed else []
        seeds += ["--init_seed", init_seed] if init_seed != config.init_seed else []
        sgd_configs.append(experiment.parse_flags([*map(str, flags + seeds), *passthrough], "mnist", prog="compare.py"))

    experiment.train_and_evaluate(config, rso_dir)
    runs = {"RSO": read_records(rso_dir)}
    rows = [[name, args.cycles, args.rso_batch_size, *cells] for name, *cells in result_rows("RSO", runs["RSO"])]
    sgd_records = []
    for k, (sgd_config, workdir) in enumerate(sgd_configs):
        experiment.train_and_evaluate(sgd_config, workdir)
        labels = {"run": k, "seed": sgd_config.seed, "init_seed": sgd_config.init_seed} if config.seeds else {}
        # One after another: a record's time counts the runs before it, as RSO's counts all its runs.
        before = sgd_records[-1]["wall_time_s"] if sgd_records else 0.0
        sgd_records += [labels | r | {"wall_time_s": before + r["wall_time_s"]} for r in read_records(workdir)]
    runs["SGD"] = sgd_records
    rows += [[name, args.cycles, args.sgd_batch_size, *cells] for name, *cells in result_rows("SGD", sgd_records)]

    caption = (
        f"MNIST, first {args.train_subset or 60000} training images, full test set, {args.cycles} RSO cycle(s) "
        "vs as many SGD epochs."
    )
    if config.seeds:
        caption += (f" Accuracies: mean ± standard deviation over the seeds {args.seeds} (per run: "
                    "rso/summary.json, sgd/seed_<k>/summary.json).")
    table = markdown_table(["optimizer", "cycles/epochs", "batch", *RESULT_COLUMNS], rows, caption)
    path = os.path.join(args.workdir, "compare.md")
    with experiment.writing(path), open(path, "w") as f:
        f.write(table + "\n")
    path = os.path.join(args.workdir, "compare.png")
    with experiment.writing(path):
        if config.runs is None:
            plot_curves(runs, path, title="MNIST: RSO vs SGD")
        else:  # each run thin, the mean thick, a colour per method (and swept value)
            plot_runs(runs_by_sweep(runs["RSO"], "RSO") | runs_by_sweep(runs["SGD"], "SGD"), path, title="MNIST: RSO vs SGD")
    print(table)
    return table


if __name__ == "__main__":
    sys.exit(experiment.cli(main, "compare.py"))
