"""Train the paper's MNIST network with RSO or with the optax SGD baseline.

    python experiments/mnist.py --optimizer rso --cycles 1 --batch_size 512 \
        --train_subset 10000 --workdir runs/rso

Writes WORKDIR/metrics.jsonl (one record per RSO layer sweep or SGD epoch, appended as they
come), WORKDIR/summary.json and WORKDIR/curves.png.
"""

import argparse
import json
import logging
import os
import sys
import time

import jax

import rsojax
from rsojax.data import load_mnist
from rsojax.plots import plot_curves
from rsojax.train import params_sha256, run_rso, run_sgd

EVALUATORS = {
    "cached": rsojax.Cached,
    "generic": lambda model: rsojax.Generic(rsojax.sequential_loss(model), model.input_shape),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--optimizer", choices=["rso", "sgd"], default="rso")
    p.add_argument("--cycles", type=int, default=50, help="RSO cycles; SGD epochs")
    p.add_argument("--batch_size", type=int, default=None, help="RSO batch per weight (default 5000, the paper); SGD minibatch (default 128)")
    p.add_argument("--train_subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--seed", type=int, default=72, help="sampling seed (the parameters use --init_seed)")
    p.add_argument("--init_seed", type=int, default=420)
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", default=None, help="TFDS data directory (default: $TFDS_DATA_DIR)")
    p.add_argument("--evaluator", choices=sorted(EVALUATORS), default="cached", help="RSO candidate evaluation path")
    p.add_argument("--kernels_only", action="store_true", help="search kernels only (Algorithm 1 as printed), not BN")
    p.add_argument("--anneal_floor", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--chunk_size", type=int, default=256, help="weights per compiled RSO chunk")
    p.add_argument("--learning_rate", type=float, default=0.05, help="SGD")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD")
    p.add_argument("--channels", type=int, default=16, help="conv channels (16 = the paper)")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 5000 if args.optimizer == "rso" else 128
    return args


def write_json(path, obj):
    """Writes atomically: a reader never sees a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    os.makedirs(args.workdir, exist_ok=True)
    data = load_mnist(args.data_dir, args.train_subset)
    model = rsojax.mnist_convnet(channels=args.channels)
    logging.info("%s on %d training images, %s", args.optimizer, data.x_train.shape[0], jax.devices()[0])

    if args.optimizer == "rso":
        config = rsojax.RSOConfig(
            batch_size=args.batch_size, cycles=args.cycles, anneal_floor=args.anneal_floor, weight_decay=args.weight_decay
        )
        progress = Progress()
        runs = run_rso(
            model,
            data,
            config,
            seed=args.seed,
            init_seed=args.init_seed,
            evaluator=EVALUATORS[args.evaluator](model),
            kernels_only=args.kernels_only,
            chunk_size=args.chunk_size,
            on_chunk=progress.update,
        )
    else:
        runs = run_sgd(
            model,
            data,
            epochs=args.cycles,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            momentum=args.momentum,
            seed=args.seed,
            init_seed=args.init_seed,
        )

    records = []
    with open(os.path.join(args.workdir, "metrics.jsonl"), "w") as metrics_file:
        for result, record in runs:
            records.append(record)
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            logging.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    summary = {
        "optimizer": args.optimizer,
        "config": vars(args),
        "test_accuracy": records[-1]["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in records),
        "weight_updates": records[-1]["weight_updates"],
        "wall_time_s": records[-1]["wall_time_s"],
        "params_sha256": params_sha256(result.params if isinstance(result, rsojax.RSOState) else result),
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(os.path.join(args.workdir, "summary.json"), summary)
    plot_curves({args.optimizer.upper(): records}, os.path.join(args.workdir, "curves.png"), title=f"MNIST, {args.optimizer.upper()}")
    logging.info("test accuracy %.4f (best %.4f), %s", summary["test_accuracy"], summary["best_test_accuracy"], args.workdir)
    return summary


class Progress:
    """A tqdm bar per layer sweep, fed by the engine's per-chunk callback."""

    def __init__(self):
        self.bar = None

    def update(self, done, total):
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="w", leave=False, disable=None)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()
            self.bar = None


if __name__ == "__main__":
    main()
