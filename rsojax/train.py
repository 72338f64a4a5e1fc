"""Training runs as generators: RSO and the SGD baseline, resumable at any yield.

Each generator yields a `Step` after every compiled chunk of work (RSO: a chunk of weights;
SGD: an epoch). A `Step` holds the run's whole position (`RSORun` / `SGDRun`, pytrees of
arrays that `rsojax.checkpoint` saves), the cumulative counters, and a record when a layer
sweep (RSO) or an epoch (SGD) has just finished. Passing a saved `Step` back as `start`
continues the run exactly where it stood. The generators write no files.
"""

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsojax.data import Dataset
from rsojax.evaluation import accuracy
from rsojax.evaluators import Evaluator, default_evaluator
from rsojax.models import Sequential
from rsojax.rso import RSO, RSOConfig, RSOState, SweepMetrics
from rsojax.sharding import replicate

# The defaults of every entry point (`run_rso`, `run_sgd`, `rsojax.peer.run_es`, the
# experiment's config and the command lines): the reference code's seeds, and the weights per
# compiled RSO call (a checkpoint can fall between two calls).
SEED = 72  # the reference code's sampling seed: the draws of dw and the minibatch stream
INIT_SEED = 420  # the reference code's parameter initialisation seed
CHUNK_SIZE = 576  # weights per compiled RSO call


@flax.struct.dataclass
class RSORun:
    """Where an RSO run stands: the engine state and the position inside the cycle."""

    state: RSOState
    layer: jax.Array  # index into the layer order
    weight: jax.Array  # next visit position inside that layer
    partial: SweepMetrics  # the metrics of that layer so far


@flax.struct.dataclass
class SGDRun:
    params: Any
    opt_state: Any
    epoch: jax.Array  # epochs completed


class Step(NamedTuple):
    run: Any  # RSORun or SGDRun
    weight_updates: int
    wall_time_s: float  # training time only: test evaluation is not counted
    record: dict | None = None  # set when a layer sweep (RSO) or an epoch (SGD) has finished


def init_params(model: Sequential, seed: int = INIT_SEED):
    """Model parameters from `seed` (the reference code initialises with seed 420)."""
    return model.init(jax.random.key(seed), np.zeros((1, *model.input_shape), np.float32), train=True)["params"]


def params_sha256(params) -> str:
    """sha256 over the parameters' bytes: leaves in `jax.tree.leaves` order (sorted dict keys),
    each as its C-order bytes in its own dtype."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def rso_trainer(
    model: Sequential, config: RSOConfig, evaluator: Evaluator | None = None, kernels_only: bool = False, mesh=None
) -> RSO:
    """An `RSO` over `model.search_order()`; by default with the fastest exact evaluator that
    supports the config's granularity (`rsojax.evaluators.default_evaluator`)."""
    if evaluator is None:
        evaluator = default_evaluator(model, config.granularity)
    return RSO(evaluator, model.search_order(kernels_only), config, mesh=mesh)


def start_rso(rso: RSO, model: Sequential, data: Dataset, seed: int = SEED, init_seed: int = INIT_SEED) -> Step:
    """The step before any work: fresh parameters from `init_seed`, the draws keyed by `seed`."""
    state = rso.init(init_params(model, init_seed), jax.random.key(seed), (data.x_train, data.y_train))
    metrics = SweepMetrics.zeros(jax.tree.leaves(state.params)[0].dtype)
    return Step(RSORun(state=state, layer=jnp.int32(0), weight=jnp.int32(0), partial=metrics), 0, 0.0)


def run_rso(
    rso: RSO,
    model: Sequential,
    data: Dataset,
    start: Step | None = None,
    *,
    seed: int = SEED,
    init_seed: int = INIT_SEED,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Iterator[Step]:
    """Runs RSO from `start` (default: a fresh start from the seeds) to the end of
    `rso.config.cycles`, yielding after every chunk of `chunk_size` weights; the step that
    ends a layer sweep carries its record. With `rso.mesh`, data and state are replicated on it."""
    data = replicate(data, rso.mesh)
    config, train = rso.config, (data.x_train, data.y_train)
    start = start or start_rso(rso, model, data, seed, init_seed)
    run, updates, wall_time = replicate(start.run, rso.mesh), start.weight_updates, start.wall_time_s
    ctx = None  # the evaluator's context, passed on so that it can reuse caches still valid
    while int(run.state.cycle) < config.cycles:
        layer = int(run.layer)
        path = rso.layers[layer]
        n = rso.n_weights(run.state, path)
        state, metrics, pos = run.state, run.partial, int(run.weight)
        tic = time.perf_counter()
        for state, m, stop, ctx in rso.chunks(state, train, path, pos, chunk_size, ctx):
            jax.block_until_ready(state.params)
            metrics, updates, pos = metrics + m, updates + stop - pos, stop
            wall_time += time.perf_counter() - tic
            tic = time.perf_counter()
            if on_chunk is not None:
                on_chunk(pos, n)
            if pos < n:
                yield Step(RSORun(state, jnp.int32(layer), jnp.int32(pos), metrics), updates, wall_time)
        record = _sweep_record(rso, model, data, state, layer, metrics, updates, wall_time)
        if layer + 1 == len(rso.layers):
            state, layer = state.replace(cycle=state.cycle + 1), -1
        run = RSORun(state, jnp.int32(layer + 1), jnp.int32(0), SweepMetrics.zeros(metrics.loss_before.dtype))
        yield Step(run, updates, wall_time, record)


def _sweep_record(rso, model, data, state, layer, m: SweepMetrics, updates, wall_time) -> dict:
    finite = max(int(m.weights) - int(m.nonfinite), 1)
    per_example = finite * rso.config.batch_size
    cycle = int(state.cycle)
    return {
        "cycle": cycle,
        "progress": cycle + (layer + 1) / len(rso.layers),
        "layer": rso.layers[layer],
        "n_weights": int(m.weights),
        "accepted": int(m.accepted),
        "nonfinite": int(m.nonfinite),
        "batch_loss_before": float(m.loss_before) / per_example,
        "batch_loss_after": float(m.loss_after) / per_example,
        "test_accuracy": accuracy(model, state.params, data.x_train, data.x_test, data.y_test, precision=rso.config.precision),
        "weight_updates": updates,
        "wall_time_s": wall_time,
    }


def start_sgd(model: Sequential, optimizer: optax.GradientTransformation, init_seed: int = INIT_SEED) -> Step:
    params = init_params(model, init_seed)
    return Step(SGDRun(params=params, opt_state=optimizer.init(params), epoch=jnp.int32(0)), 0, 0.0)


def run_sgd(
    model: Sequential,
    data: Dataset,
    optimizer: optax.GradientTransformation,
    start: Step | None = None,
    *,
    epochs: int,
    batch_size: int = 128,
    seed: int = SEED,
    init_seed: int = INIT_SEED,
    mesh=None,
    precision: str = "float32",
) -> Iterator[Step]:
    """Runs SGD from `start` (default: fresh parameters from `init_seed`) to `epochs` epochs,
    yielding a step with a record per epoch; data-parallel over `mesh` if given. Test
    accuracy is computed at `precision` (`rsojax.precision`), as RSO's; the training steps
    use JAX's default precision, as gradient training usually does."""
    from rsojax.sgd import make_epoch

    start = start or start_sgd(model, optimizer, init_seed)

    n = data.x_train.shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size: expected 1..{n} (the training set size), got {batch_size}")
    epoch_fn = make_epoch(model, optimizer, batch_size, mesh)
    data = replicate(data, mesh)
    run, wall_time = replicate(start.run, mesh), start.wall_time_s
    n_params = sum(a.size for a in jax.tree.leaves(run.params))
    for epoch in range(int(run.epoch), epochs):
        tic = time.perf_counter()
        key = jax.random.fold_in(jax.random.key(seed), epoch)
        params, opt_state, loss = epoch_fn(run.params, run.opt_state, key, data.x_train, data.y_train)
        jax.block_until_ready(params)
        wall_time += time.perf_counter() - tic
        run = SGDRun(params=params, opt_state=opt_state, epoch=jnp.int32(epoch + 1))
        updates = n_params * (n // batch_size) * (epoch + 1)
        record = {
            "epoch": epoch,
            "progress": epoch + 1,
            "train_loss": float(loss),
            "test_accuracy": accuracy(model, params, data.x_train, data.x_test, data.y_test, precision=precision),
            "weight_updates": updates,
            "wall_time_s": wall_time,
        }
        yield Step(run, updates, wall_time, record)
