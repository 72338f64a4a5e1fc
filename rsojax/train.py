"""Training runs as generators: RSO and the SGD baseline, resumable at any yield.

Each generator yields a `Step` after every compiled chunk of work (RSO: a chunk of weights;
SGD: an epoch). A `Step` holds the run's whole position (`RSORun` / `SGDRun`, pytrees of
arrays that `rsojax.checkpoint` saves), the cumulative counters, and a record when a layer
sweep (RSO) or an epoch (SGD) has just finished. Passing a saved `Step` back as `start`
continues the run exactly where it stood. The generators write no files.

Several RSO runs advance together in one compiled program (`start_rso_runs`, `RSO.init_runs`):
their `RSORun` has a leading run axis on every leaf, and the step that ends a layer sweep
carries a list of records, one per run in run order, each naming its run (`run_labels`).
"""

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from rsojax.rso import RSO, SWEEPABLE, RSOConfig, RSOState, SweepMetrics
from rsojax.sharding import replicate

# The defaults of every entry point (`run_rso`, `run_sgd`, `rsojax.peer.run_es`, the
# experiment's config and the command lines): the reference code's seeds, and the weights per
# compiled RSO call (a checkpoint can fall between two calls).
SEED = 72  # the reference code's sampling seed: the draws of dw and the minibatch stream
INIT_SEED = 420  # the reference code's parameter initialisation seed
CHUNK_SIZE = 576  # weights per compiled RSO call


@flax.struct.dataclass
class RSORun:
    """Where an RSO run stands: the engine state and the position inside the cycle.

    Attributes:
      state: the engine's state.
      layer: int32, the index of the current layer in the layer order.
      weight: int32, the next visit position inside that layer.
      partial: the metrics of that layer so far.
    """

    state: RSOState
    layer: jax.Array
    weight: jax.Array
    partial: SweepMetrics


@flax.struct.dataclass
class SGDRun:
    """Where an SGD run stands.

    Attributes:
      params: the parameters.
      opt_state: the optax optimizer's state.
      epoch: int32, the epochs completed.
    """

    params: Any
    opt_state: Any
    epoch: jax.Array


class Step(NamedTuple):
    """What a training generator yields: the run's whole position, from which it resumes.

    Attributes:
      run: an `RSORun` or an `SGDRun`.
      weight_updates: weight updates so far (RSO: weights visited; SGD: parameters times steps).
      wall_time_s: training time so far, in seconds (test evaluation is not counted).
      record: set when a layer sweep (RSO) or an epoch (SGD) has just finished: the line
        `metrics.jsonl` gets; for several RSO runs, a list of such lines, one per run in run
        order, each with the run's labels (`run_labels`).
    """

    run: Any
    weight_updates: int
    wall_time_s: float
    record: dict | list[dict] | None = None


def init_params(model: Sequential, seed: int = INIT_SEED):
    """A model's initial parameters.

    Args:
      model: the network.
      seed: the initialisation seed (the reference code's by default).

    Returns:
      The `params` collection.
    """
    return model.init(jax.random.key(seed), np.zeros((1, *model.input_shape), np.float32), train=True)["params"]


def params_sha256(params) -> str:
    """A fingerprint of parameter values, to tell whether two runs ended identically.

    Args:
      params: a pytree of arrays.

    Returns:
      The hex sha256 of the leaves' bytes in `jax.tree.leaves` order (sorted dict keys),
      each as its C-order bytes in its own dtype.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def rso_trainer(
    model: Sequential, config: RSOConfig, evaluator: Evaluator | None = None, kernels_only: bool = False, mesh=None
) -> RSO:
    """An `RSO` over the model's search order.

    Args:
      model: the network.
      config: RSO's hyperparameters.
      evaluator: how candidate losses are computed; default: the fastest exact evaluator that
        supports the config's granularity (`rsojax.evaluators.default_evaluator`).
      kernels_only: search the kernels only, not BN's gamma and beta.
      mesh: devices each minibatch is split over (`rsojax.sharding.make_mesh`; None: one).

    Returns:
      The trainer.

    Raises:
      ValueError: no evaluator supports the granularity, or the evaluator given does not.
    """
    if evaluator is None:
        evaluator = default_evaluator(model, config.granularity)
    return RSO(evaluator, model.search_order(kernels_only), config, mesh=mesh)


def start_rso(rso: RSO, model: Sequential, data: Dataset, seed: int = SEED, init_seed: int = INIT_SEED) -> Step:
    """The step before any work of an RSO run.

    Args:
      rso: the trainer.
      model: the network `rso` searches.
      data: the dataset.
      seed: the sampling seed: the draws of dw and the minibatch stream.
      init_seed: the parameter initialisation seed.

    Returns:
      A `Step` at cycle 0 with fresh parameters, to pass to `run_rso` as `start`.
    """
    state = rso.init(init_params(model, init_seed), jax.random.key(seed), (data.x_train, data.y_train))
    metrics = SweepMetrics.zeros(jax.tree.leaves(state.params)[0].dtype)
    return Step(RSORun(state=state, layer=jnp.int32(0), weight=jnp.int32(0), partial=metrics), 0, 0.0)


def run_labels(
    seeds: Sequence[int], init_seeds: Sequence[int] | None = None, sweep: Mapping[str, Sequence[float]] | None = None
) -> list[dict]:
    """What tells several runs apart: every swept value combined with every seed.

    The runs are ordered by swept value (the names in `sweep`'s order, the last varying
    fastest), then by seed: with `sweep={"sigma_scale": (0.5, 1)}` and `seeds=(0, 1)`, runs 0
    and 1 are sigma_scale 0.5 with seeds 0 and 1, runs 2 and 3 sigma_scale 1.

    Args:
      seeds: the sampling seeds (draws of dw and minibatches).
      init_seeds: the initialisation seed of each seed's runs, as many as `seeds`; default:
        `INIT_SEED` for every run.
      sweep: names of `rsojax.rso.SWEEPABLE` -> their values.

    Returns:
      One dict per run: `run` (its index), `seed`, `init_seed` and each swept value.

    Raises:
      ValueError: `init_seeds` is not as long as `seeds`, or a swept name is not sweepable.
    """
    seeds, sweep = list(seeds), dict(sweep or {})
    init_seeds = [INIT_SEED] * len(seeds) if init_seeds is None else list(init_seeds)
    if len(init_seeds) != len(seeds):
        raise ValueError(f"init_seeds: expected one per seed ({len(seeds)}), got {len(init_seeds)}")
    for name in sweep:
        if name not in SWEEPABLE:
            raise ValueError(f"sweep: {name!r} cannot differ between runs; expected one of {list(SWEEPABLE)}")
    runs = []
    for values in itertools.product(*sweep.values()):
        for seed, init_seed in zip(seeds, init_seeds):
            runs.append({"run": len(runs), "seed": seed, "init_seed": init_seed, **dict(zip(sweep, values))})
    return runs


def start_rso_runs(rso: RSO, model: Sequential, data: Dataset, runs: Sequence[dict]) -> Step:
    """The step before any work of several RSO runs advanced together (`RSO.init_runs`).

    Run k is the run `start_rso(rso_k, model, data, seed, init_seed)` starts, with `rso_k`'s
    config taking run k's swept values.

    Args:
      rso: the trainer (no mesh).
      model: the network `rso` searches.
      data: the dataset.
      runs: the runs' labels (`run_labels`): each one's `seed`, `init_seed` and swept values.

    Returns:
      A `Step` at cycle 0, every leaf of its `RSORun` with a leading run axis.

    Raises:
      ValueError: as `RSO.init_runs`.
    """
    params = [init_params(model, r["init_seed"]) for r in runs]
    params = jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *params)  # stacked on the host: nothing to compile
    keys = jnp.stack([jax.random.key(r["seed"]) for r in runs])
    sweep = {name: [r[name] for r in runs] for name in SWEEPABLE if name in runs[0]}
    state = rso.init_runs(params, keys, (data.x_train, data.y_train), sweep)
    metrics = _zero_metrics(jax.tree.leaves(state.params)[0].dtype, len(runs))
    return Step(RSORun(state=state, layer=jnp.int32(0), weight=jnp.int32(0), partial=metrics), 0, 0.0)


def _zero_metrics(dtype, runs: int | None) -> SweepMetrics:
    """No weight's metrics: one set per run (a leading run axis), or one for a single run."""
    zeros = SweepMetrics.zeros(dtype)
    return zeros if runs is None else jax.tree.map(lambda a: jnp.broadcast_to(a, (runs,)), zeros)


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
    runs: Sequence[dict] | None = None,
) -> Iterator[Step]:
    """Runs RSO to the end of `rso.config.cycles`, yielding after every compiled chunk.

    With `runs`, or a `start` of several runs, every run advances in each compiled chunk, and
    a layer sweep's step carries one record per run (`Step.record`).

    Args:
      rso: the trainer (with `rso.mesh`, data and state are replicated on it).
      model: the network `rso` searches (for test accuracy).
      data: the dataset.
      start: the step to continue from (a `Step` yielded before, or restored); default: a
        fresh start from the seeds (`start_rso`).
      seed: the sampling seed of a fresh start.
      init_seed: the initialisation seed of a fresh start.
      chunk_size: weights per compiled call; a run can be saved and resumed between two.
      on_chunk: called as `on_chunk(done, total)` with the weights of the layer done so far.
      runs: several runs' labels (`run_labels`): a fresh start of them (`start_rso_runs`,
        instead of `seed` and `init_seed`), and what their records carry; with a `start` of
        several runs and no `runs`, the records carry the run's index only.

    Raises:
      ValueError: `runs` does not match the runs of `start`.

    Yields:
      A `Step` after every chunk; the step that ends a layer sweep carries its record (cycle,
      layer, counts, mean batch losses, test accuracy, weight updates, training time), or one
      per run with the run's labels first; weight updates count the weights one run visited.
    """
    data = replicate(data, rso.mesh)
    config, train = rso.config, (data.x_train, data.y_train)
    if start is None:
        start = start_rso(rso, model, data, seed, init_seed) if runs is None else start_rso_runs(rso, model, data, runs)
    run, updates, wall_time = replicate(start.run, rso.mesh), start.weight_updates, start.wall_time_s
    n_runs = run.state.runs
    if n_runs is None and runs is not None:
        raise ValueError("runs: start holds a single run; start several with start_rso_runs")
    if n_runs is not None and runs is None:
        runs = [{"run": k} for k in range(n_runs)]
    if n_runs is not None and len(runs) != n_runs:
        raise ValueError(f"runs: {len(runs)} labels for the {n_runs} runs of start")
    ctx = None  # the evaluator's context, passed on so that it can reuse caches still valid
    while _cycle(run.state) < config.cycles:
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
        if n_runs is None:
            record = _sweep_record(rso, model, data, state.params, state.cycle, metrics, layer, updates, wall_time)
        else:  # each run's parameters and metrics, taken apart on the host (indexing on the device compiles)
            params, cycle, metrics_R = jax.device_get((state.params, state.cycle, metrics))
            record = [
                labels | _sweep_record(rso, model, data, *_run(k, params, cycle, metrics_R), layer, updates, wall_time)
                for k, labels in enumerate(runs)
            ]
        if layer + 1 == len(rso.layers):
            state, layer = state.replace(cycle=state.cycle + 1), -1
        run = RSORun(state, jnp.int32(layer + 1), jnp.int32(0), _zero_metrics(metrics.loss_before.dtype, n_runs))
        yield Step(run, updates, wall_time, record)


def _cycle(state: RSOState) -> int:
    """The current cycle (the runs of a state advance together: they share it)."""
    return int(state.cycle) if state.runs is None else int(state.cycle[0])


def _run(k: int, *trees):
    """Run k's part of pytrees with a leading run axis."""
    return jax.tree.map(lambda a: a[k], trees)


def _sweep_record(rso, model, data, params, cycle, m: SweepMetrics, layer, updates, wall_time) -> dict:
    finite = max(int(m.weights) - int(m.nonfinite), 1)
    per_example = finite * rso.config.batch_size
    cycle = int(cycle)
    return {
        "cycle": cycle,
        "progress": cycle + (layer + 1) / len(rso.layers),
        "layer": rso.layers[layer],
        "n_weights": int(m.weights),
        "accepted": int(m.accepted),
        "nonfinite": int(m.nonfinite),
        "batch_loss_before": float(m.loss_before) / per_example,
        "batch_loss_after": float(m.loss_after) / per_example,
        "test_accuracy": accuracy(model, params, data.x_train, data.x_test, data.y_test, precision=rso.config.precision),
        "weight_updates": updates,
        "wall_time_s": wall_time,
    }


def start_sgd(model: Sequential, optimizer: optax.GradientTransformation, init_seed: int = INIT_SEED) -> Step:
    """The step before any work of an SGD run.

    Args:
      model: the network.
      optimizer: the optax optimizer.
      init_seed: the parameter initialisation seed.

    Returns:
      A `Step` at epoch 0 with fresh parameters, to pass to `run_sgd` as `start`.
    """
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
    """Runs gradient training (the baseline) to `epochs` epochs, yielding after each.

    The training steps use JAX's default precision, as gradient training usually does; test
    accuracy is computed at `precision`, as RSO's.

    Args:
      model: the network.
      data: the dataset.
      optimizer: the optax optimizer.
      start: the step to continue from; default: fresh parameters (`start_sgd`).
      epochs: the epoch to stop after.
      batch_size: examples per step (the last partial batch of an epoch is dropped).
      seed: the seed of each epoch's shuffle.
      init_seed: the initialisation seed of a fresh start.
      mesh: devices each minibatch is split over (None: one).
      precision: of test evaluation, a name of `rsojax.precision.PRECISIONS`.

    Yields:
      A `Step` per epoch with its record (epoch, mean training loss, test accuracy, weight
      updates, training time).

    Raises:
      ValueError: `batch_size` is not in 1..N.
    """
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
