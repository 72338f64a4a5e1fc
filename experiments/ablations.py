"""The paper's RSO variants side by side on MNIST under one budget (same cycles, batch, data).

    python experiments/ablations.py --cycles 1 --train_subset 2000 --batch_size 128 \
        --channels 8 --workdir runs/ablations

Runs experiments/mnist.py once per variant into WORKDIR/<variant>, then writes
WORKDIR/ablations.md (final and best test accuracy, weight updates, training time) and
WORKDIR/ablations.png (accuracy against cycles, weight updates and wall time). Flags it does
not know are passed to every run (for example --kernels_only or --evaluator generic).
"""

import argparse
import json
import os

import mnist

from rsojax.plots import plot_curves

# variant -> the experiments/mnist.py flags that select it; "normal" is the reference code's RSO.
VARIANTS = {
    "normal": [],
    "uniform": ["--perturbation", "uniform"],
    "ternary": ["--perturbation", "ternary"],
    "input_first": ["--input_first"],
    "layer_parallel": ["--granularity", "layer"],
    "neuron_parallel": ["--granularity", "neuron"],
}


def run_variants(variants, common, workdir):
    """Runs experiments/mnist.py per variant; returns {variant: (summary, records)}."""
    results = {}
    for name in variants:
        run_dir = os.path.join(workdir, name)
        summary = mnist.main([*common, *VARIANTS[name], "--workdir", run_dir])
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            results[name] = summary, [json.loads(line) for line in f]
    return results


def table(results, caption) -> str:
    rows = [
        f"| {name} | {100 * s['test_accuracy']:.2f} | {100 * s['best_test_accuracy']:.2f} | {s['weight_updates']:,} | "
        f"{s['wall_time_s']:.0f} |"
        for name, (s, _) in results.items()
    ]
    header = ["| variant | test acc. (%) | best (%) | weight updates | train time (s) |", "|---|---|---|---|---|"]
    return "\n".join([caption, "", *header, *rows])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--cycles", type=int, default=1)
    p.add_argument("--train_subset", type=int, default=2000)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--evaluator", default="cached", help="one that every variant supports (not incremental)")
    p.add_argument("--workdir", required=True)
    args, passthrough = p.parse_known_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")

    common = [
        "--cycles", str(args.cycles), "--train_subset", str(args.train_subset), "--batch_size", str(args.batch_size),
        "--channels", str(args.channels), "--evaluator", args.evaluator, *passthrough,
    ]
    results = run_variants(variants, common, args.workdir)
    caption = (
        f"MNIST, RSO variants: {args.cycles} cycle(s), batch {args.batch_size} per weight, first "
        f"{args.train_subset or 60000} training images, {args.channels} channels, {args.evaluator} evaluator, full test set."
    )
    text = table(results, caption)
    with open(os.path.join(args.workdir, "ablations.md"), "w") as f:
        f.write(text + "\n")
    plot_curves({name: records for name, (_, records) in results.items()}, os.path.join(args.workdir, "ablations.png"),
                title="MNIST: RSO variants")
    print(text)
    return results


if __name__ == "__main__":
    main()
