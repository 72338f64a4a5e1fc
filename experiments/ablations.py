"""The paper's RSO variants side by side on MNIST under one budget (same cycles, batch, data).

    python experiments/ablations.py --cycles 1 --train_subset 2000 --batch_size 128 \
        --channels 8 --workdir runs/ablations

Trains each variant with `rsojax.experiment.train_and_evaluate` into WORKDIR/<variant>, then
writes WORKDIR/ablations.md (final and best test accuracy, weight updates, training time) and
WORKDIR/ablations.png (accuracy against cycles, weight updates and wall time). Flags it does
not know go to every run (for example --kernels_only, --seed 73 or --data FILE.npz); with
--seeds 0-3 (or --sweep) each variant trains its runs in one program, and the table gives the
accuracies as mean ± standard deviation over them (a row per swept value; docs/many-runs.md).
"""

import argparse
import os
import sys

from rsojax import experiment
from rsojax.plots import plot_curves, plot_runs
from rsojax.records import RESULT_COLUMNS, markdown_table, read_records, result_rows, runs_by_sweep

# variant -> the flags that select it; "normal" is the reference code's RSO.
VARIANTS = {
    "normal": [],
    "uniform": ["--perturbation", "uniform"],
    "ternary": ["--perturbation", "ternary"],
    "input_first": ["--input_first"],
    "layer_parallel": ["--granularity", "layer"],
    "neuron_parallel": ["--granularity", "neuron"],
}


def main(argv=None) -> dict:
    """Returns {variant: (summary, records)}."""
    p = argparse.ArgumentParser(prog="ablations.py", description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--cycles", type=int, default=1, help="[default: 1]")
    p.add_argument("--train_subset", type=int, default=2000, help="[default: 2000]")
    p.add_argument("--batch_size", type=int, default=128, help="[default: 128]")
    p.add_argument("--channels", type=int, default=8, help="[default: 8]")
    p.add_argument("--evaluator", default="cached", help="one that every variant supports [default: cached]")
    p.add_argument("--workdir", required=True)
    args, passthrough = p.parse_known_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")

    common = ["--cycles", str(args.cycles), "--train_subset", str(args.train_subset), "--batch_size",
              str(args.batch_size), "--channels", str(args.channels), "--evaluator", args.evaluator, *passthrough]
    results = {}
    for name in variants:
        argv = [*common, *VARIANTS[name], "--workdir", os.path.join(args.workdir, name)]
        config, workdir = experiment.parse_flags(argv, "mnist", prog="ablations.py")
        results[name] = experiment.train_and_evaluate(config, workdir), read_records(workdir)
    caption = (
        f"MNIST, RSO variants: {args.cycles} cycle(s), batch {args.batch_size} per weight, first "
        f"{args.train_subset or 60000} training images, {args.channels} channels, {args.evaluator} evaluator, full test set."
    )
    rows = [row for name, (_, records) in results.items() for row in result_rows(name, records)]
    several = config.runs is not None
    if several:
        caption += f" Accuracies: mean ± standard deviation over each variant's {len(config.runs)} runs (or per swept value)."
    text = markdown_table(["variant", *RESULT_COLUMNS], rows, caption)
    with open(os.path.join(args.workdir, "ablations.md"), "w") as f:
        f.write(text + "\n")
    path = os.path.join(args.workdir, "ablations.png")
    if several:
        groups = {label: runs for name, (_, records) in results.items() for label, runs in runs_by_sweep(records, name).items()}
        plot_runs(groups, path, title="MNIST: RSO variants")
    else:
        plot_curves({name: records for name, (_, records) in results.items()}, path, title="MNIST: RSO variants")
    print(text)
    return results


if __name__ == "__main__":
    sys.exit(experiment.cli(main, "ablations.py"))
