"""Train the paper's MNIST network with RSO or with the optax SGD baseline.

    python experiments/mnist.py --optimizer rso --cycles 1 --batch_size 512 \
        --train_subset 10000 --workdir runs/rso

The paper's variants are flags: --perturbation {normal,uniform,ternary}, --input_first,
--granularity {weight,layer,neuron}. experiments/cifar10.py runs this same `main` with the
CIFAR-10 `Task`.

Writes WORKDIR/metrics.jsonl (one record per RSO layer sweep or SGD epoch), summary.json,
curves.png, config.json and checkpoints/ (orbax, at every layer boundary and every
--checkpoint_every_s seconds). Rerunning the same command with the same --workdir resumes
where the run stopped and ends exactly as an uninterrupted run would.

Each minibatch is split over --devices devices (default: all; see `rsojax.sharding`). With
--distributed, one process per host joins a multi-process run (`jax.distributed.initialize`)
and the mesh spans every host's devices; only process 0 writes files:

    python experiments/mnist.py --distributed --coordinator_address host0:1234 \
        --num_processes 2 --process_id $RANK --workdir runs/rso   # on each of 2 hosts
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable

import jax
import optax

import rsojax
from rsojax.checkpoint import CheckpointError, Checkpointer
from rsojax.data import load_cifar10, load_mnist
from rsojax.models import cifar10_resnet, mnist_convnet
from rsojax import sharding
from rsojax.plots import plot_curves
from rsojax.train import SGDRun, Step, params_sha256, run_rso, run_sgd, start_rso, start_sgd

EVALUATORS = {
    "incremental": rsojax.Incremental,  # exact, the fastest: the default where it applies
    "cached": rsojax.Cached,
    "generic": lambda model: rsojax.Generic(rsojax.sequential_loss(model), model.input_shape),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """What differs between the experiments: the data, the network, the paper's defaults."""

    name: str  # for titles and messages
    load: Callable  # (data_dir, train_subset) -> rsojax.data.Dataset
    model: Callable  # channels -> model
    evaluators: tuple[str, ...]  # keys of EVALUATORS that apply to the model; the first is the default
    cycles: int  # the paper's number of cycles
    prog: str  # the script, for error messages


MNIST = Task("MNIST", load_mnist, mnist_convnet, ("incremental", "cached", "generic"), 50, "mnist.py")
# A residual net is not a Sequential: it is searched with the Generic evaluator (rsojax.models.ResidualNet).
CIFAR10 = Task("CIFAR-10", load_cifar10, cifar10_resnet, ("generic",), 500, "cifar10.py")
log = logging.getLogger("rsojax.experiments")
if not log.handlers:  # absl configures the root logger when TensorFlow loads: keep our own
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False
# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ("workdir", "data_dir", "checkpoint_every_s", "coordinator_address", "process_id")


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, no traceback."""


def parse_args(argv=None, task: Task = MNIST):
    p = argparse.ArgumentParser(prog=task.prog, description=f"Train the paper's {task.name} network with RSO or SGD.")
    p.add_argument("--optimizer", choices=["rso", "sgd"], default="rso")
    p.add_argument("--cycles", type=int, default=task.cycles, help="RSO cycles; SGD epochs")
    p.add_argument(
        "--batch_size", type=int, default=None, help="RSO batch per weight (default 5000, the paper); SGD minibatch (default 128)"
    )
    p.add_argument("--train_subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--seed", type=int, default=72, help="sampling seed (the parameters use --init_seed)")
    p.add_argument("--init_seed", type=int, default=420)
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", default=None, help="TFDS data directory (default: $TFDS_DATA_DIR)")
    p.add_argument("--evaluator", choices=task.evaluators, default=task.evaluators[0], help="RSO candidate evaluation path")
    p.add_argument("--kernels_only", action="store_true", help="search kernels only (Algorithm 1 as printed), not BN")
    p.add_argument("--anneal_floor", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--chunk_size", type=int, default=576, help="weights per compiled RSO chunk (each chunk prepares its caches)")
    p.add_argument("--checkpoint_every_s", type=float, default=300.0, help="also checkpoint inside a layer this often")
    p.add_argument("--learning_rate", type=float, default=0.05, help="SGD")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD")
    p.add_argument("--channels", type=int, default=16, help="conv channels (16 = the paper)")
    p.add_argument("--devices", type=int, default=0, help="devices the batch is split over (0 = all, of all processes)")
    p.add_argument("--distributed", action="store_true", help="join a multi-process run (jax.distributed.initialize)")
    p.add_argument("--coordinator_address", help="with --distributed: host:port of process 0 (default: $JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num_processes", type=int, help="with --distributed (default: $JAX_NUM_PROCESSES)")
    p.add_argument("--process_id", type=int, help="with --distributed (default: $JAX_PROCESS_ID)")
    p.add_argument("--perturbation", choices=["normal", "uniform", "ternary"], default="normal", help="distribution of dw")
    p.add_argument("--input_first", action="store_true", help="inside a kernel, visit by input channel first")
    p.add_argument("--granularity", choices=["weight", "layer", "neuron"], default="weight", help="RSO update scheme")
    p.add_argument("--parallel_vmap", type=int, default=16, help="weights or threads per vmapped call (parallel schemes)")
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 5000 if args.optimizer == "rso" else 128
    for name in ("cycles", "batch_size", "chunk_size", "channels", "parallel_vmap"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    return args


def write_json(path, obj):
    """Writes atomically: a reader never sees a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_lines(path, records):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def prepare_workdir(args) -> dict:
    """Creates the workdir, or checks that it holds a run of the same configuration."""
    config = vars(args)
    try:
        os.makedirs(args.workdir, exist_ok=True)
        probe = os.path.join(args.workdir, ".write_test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"--workdir: {args.workdir} cannot be written ({e.strerror})") from None
    path = os.path.join(args.workdir, "config.json")
    if os.path.exists(path):
        saved = json.load(open(path))
        differ = sorted(k for k in saved.keys() | config.keys() if k not in RESUMABLE_CHANGES and saved.get(k) != config.get(k))
        if differ:
            changes = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in differ)
            raise UsageError(
                f"--workdir: {args.workdir} holds a run with another configuration ({changes}); "
                "use a new --workdir, or the saved settings to resume"
            )
    else:
        write_json(path, config)
    return config


def main(argv=None, task: Task = MNIST):
    args = parse_args(argv, task)
    if args.distributed:  # unset values come from the environment or the cluster (Slurm, Open MPI)
        sharding.distributed_init(args.coordinator_address, args.num_processes, args.process_id)
    try:
        mesh = sharding.make_mesh(args.devices)
        sharding.check_batch(args.batch_size, mesh)
    except ValueError as e:
        raise UsageError("--" + str(e).replace("n_devices:", "devices:")) from None
    writer = jax.process_index() == 0  # the other processes compute the same run and write nothing
    if not writer:
        log.setLevel(logging.WARNING)
    config = prepare_workdir(args) if writer else vars(args)
    summary_path = os.path.join(args.workdir, "summary.json")
    try:
        data = task.load(args.data_dir, args.train_subset)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    # Created after the data is loaded: TFDS's mock file system (tests) is active while a
    # dataset loads, and would catch the checkpoint manager's background file operations.
    checkpointer = Checkpointer(os.path.join(args.workdir, "checkpoints")) if writer else None
    model = task.model(channels=args.channels)

    if args.optimizer == "rso":
        try:
            rso_config = rsojax.RSOConfig(
                batch_size=args.batch_size, cycles=args.cycles, anneal_floor=args.anneal_floor, weight_decay=args.weight_decay,
                output_first=not args.input_first, perturbation=args.perturbation, granularity=args.granularity,
                parallel_vmap=args.parallel_vmap,
            )
            rso = rsojax.rso_trainer(model, rso_config, EVALUATORS[args.evaluator](model), args.kernels_only, mesh)
            fresh = start_rso(rso, model, data, args.seed, args.init_seed)
        except ValueError as e:
            raise UsageError(str(e).replace("batch_size:", "--batch_size:")) from None
        restored, meta = restore(checkpointer, fresh)
        progress = Progress()
        steps = run_rso(
            rso, model, data, restored or fresh, chunk_size=args.chunk_size, on_chunk=progress.update if writer else None
        )
    else:
        optimizer = optax.sgd(args.learning_rate, momentum=args.momentum)
        if args.batch_size > data.x_train.shape[0]:
            raise UsageError(f"--batch_size: {args.batch_size} is larger than the training set ({data.x_train.shape[0]} images)")
        fresh = start_sgd(model, optimizer, args.init_seed)
        restored, meta = restore(checkpointer, fresh)
        steps = run_sgd(
            model, data, optimizer, restored or fresh, epochs=args.cycles, batch_size=args.batch_size, seed=args.seed, mesh=mesh
        )

    records = list(meta["records"]) if restored else []
    if restored and meta["finished"] and (os.path.exists(summary_path) or not writer):
        log.info("the run in %s has finished already; nothing to do", args.workdir)
        if checkpointer is not None:
            checkpointer.close()
        return json.load(open(summary_path)) if writer else {}
    log.info(
        "%s on %d training images, %s x%d in %d process(es), %s",
        args.optimizer,
        data.x_train.shape[0],
        jax.devices()[0],
        mesh.size,
        jax.process_count(),
        f"resuming after {restored.weight_updates:,} weight updates" if restored else "from the start",
    )

    metrics_path = os.path.join(args.workdir, "metrics.jsonl")
    if writer:
        write_lines(metrics_path, records)  # the records of the checkpoint resumed from, nothing after it
    step = restored or fresh
    last_save = time.monotonic()
    with open(metrics_path if writer else os.devnull, "a") as metrics_file:
        for step in steps:
            if step.record is not None:
                records.append(step.record)
                metrics_file.write(json.dumps(step.record) + "\n")
                metrics_file.flush()
                log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in step.record.items()))
            if step.record is not None or time.monotonic() - last_save >= args.checkpoint_every_s:
                save(checkpointer, step, records, finished=False)
                last_save = time.monotonic()

    params = step.run.params if isinstance(step.run, SGDRun) else step.run.state.params
    summary = {
        "optimizer": args.optimizer,
        "config": config,
        "test_accuracy": records[-1]["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in records),
        "weight_updates": records[-1]["weight_updates"],
        "wall_time_s": records[-1]["wall_time_s"],
        "params_sha256": params_sha256(params),
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        **sharding.describe(mesh),
    }
    if not writer:
        return summary
    plot_curves({args.optimizer.upper(): records}, os.path.join(args.workdir, "curves.png"), title=f"{task.name}, {args.optimizer.upper()}")
    write_json(summary_path, summary)
    save(checkpointer, step, records, finished=True)
    checkpointer.close()
    log.info("test accuracy %.4f (best %.4f), %s", summary["test_accuracy"], summary["best_test_accuracy"], args.workdir)
    return summary


def save(checkpointer: Checkpointer | None, step: Step, records: list, finished: bool):
    if checkpointer is None:  # not process 0
        return
    meta = {"records": records, "weight_updates": step.weight_updates, "wall_time_s": step.wall_time_s, "finished": finished}
    # SGD steps count epochs; RSO steps count weights visited: both increase with every save.
    number = int(step.run.epoch) if isinstance(step.run, SGDRun) else step.weight_updates
    checkpointer.save(number + int(finished), step.run, meta)


def restore(checkpointer: Checkpointer | None, fresh: Step) -> tuple[Step | None, dict | None]:
    """The newest checkpoint as a Step and its metadata; (None, None) if there is none. With
    several processes, process 0 reads it and sends it to the others."""
    found, error = None, None
    if checkpointer is not None:
        try:
            found = checkpointer.restore(fresh.run)
        except CheckpointError as e:
            error = str(e)
    if jax.process_count() > 1:
        meta, error = sharding.broadcast_json([found and found[2], error])
        found = None if meta is None else (None, sharding.broadcast_tree(found[1] if found else fresh.run), meta)
    if error:
        raise UsageError(error)
    if found is None:
        return None, None
    _, run, meta = found
    return Step(run, meta["weight_updates"], meta["wall_time_s"]), meta


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


def cli(argv=None, task: Task = MNIST) -> int:
    """`main` for the command line: user errors become one line on stderr and exit code 2."""
    try:
        main(argv, task)
    except UsageError as e:
        print(f"{task.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{task.prog}: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
