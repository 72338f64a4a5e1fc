"""Training runs as generators of records: RSO per layer sweep, SGD per epoch.

The records carry what `experiments/mnist.py` writes to `metrics.jsonl`; the generators do
no file writing, so notebooks can consume them directly.
"""

import hashlib
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
import optax

from rsojax.data import Dataset
from rsojax.evaluation import accuracy
from rsojax.evaluators import Cached, Evaluator
from rsojax.models import Sequential
from rsojax.rso import RSO, RSOConfig


def init_params(model: Sequential, seed: int = 420, x_example=None):
    """Model parameters from `seed` (the reference code initialises with seed 420)."""
    x = np.zeros((1, *model.input_shape), np.float32) if x_example is None else x_example[:1]
    return model.init(jax.random.key(seed), x, train=True)["params"]


def params_sha256(params) -> str:
    """sha256 over the parameters' bytes: leaves in `jax.tree.leaves` order (sorted dict keys),
    each as its C-order bytes in its own dtype."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def run_rso(
    model: Sequential,
    data: Dataset,
    config: RSOConfig,
    *,
    seed: int = 72,
    init_seed: int = 420,
    evaluator: Evaluator | None = None,
    kernels_only: bool = False,
    chunk_size: int = 256,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Iterator[tuple]:
    """Trains with RSO; yields `(state, record)` after every layer sweep.

    `wall_time_s` counts training only (sweeps, including the per-layer cache), not the test
    evaluation after each sweep.
    """
    evaluator = evaluator or Cached(model)
    rso = RSO(evaluator, model.search_order(kernels_only), config)
    train = (data.x_train, data.y_train)
    state = rso.init(init_params(model, init_seed), jax.random.key(seed), train)
    n_layers, weight_updates, wall_time = len(rso.layers), 0, 0.0
    for cycle in range(config.cycles):
        for i, path in enumerate(rso.layers):
            start = time.perf_counter()
            state, m = rso.layer(state, train, path, chunk_size=chunk_size, on_chunk=on_chunk)
            jax.block_until_ready(state.params)
            wall_time += time.perf_counter() - start
            weight_updates += int(m.weights)
            finite = max(int(m.weights) - int(m.nonfinite), 1)
            yield state, {
                "cycle": cycle,
                "progress": cycle + (i + 1) / n_layers,
                "layer": path,
                "n_weights": int(m.weights),
                "accepted": int(m.accepted),
                "nonfinite": int(m.nonfinite),
                "batch_loss_before": float(m.loss_before) / finite / config.batch_size,
                "batch_loss_after": float(m.loss_after) / finite / config.batch_size,
                "test_accuracy": accuracy(model, state.params, data.x_train, data.x_test, data.y_test),
                "weight_updates": weight_updates,
                "wall_time_s": wall_time,
            }
        state = state.replace(cycle=state.cycle + 1)


def run_sgd(
    model: Sequential,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 0.05,
    momentum: float = 0.9,
    seed: int = 72,
    init_seed: int = 420,
) -> Iterator[tuple]:
    """Trains with optax SGD + momentum; yields `(params, record)` after every epoch."""
    from rsojax.sgd import make_epoch

    n = data.x_train.shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size: expected 1..{n} (the training set size), got {batch_size}")
    optimizer = optax.sgd(learning_rate, momentum=momentum)
    params = init_params(model, init_seed)
    opt_state = optimizer.init(params)
    epoch_fn = make_epoch(model, optimizer, batch_size)
    n_params = sum(a.size for a in jax.tree.leaves(params))
    key, wall_time = jax.random.key(seed), 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        params, opt_state, loss = epoch_fn(params, opt_state, jax.random.fold_in(key, epoch), data.x_train, data.y_train)
        jax.block_until_ready(params)
        wall_time += time.perf_counter() - start
        yield params, {
            "epoch": epoch,
            "progress": epoch + 1,
            "train_loss": float(loss),
            "test_accuracy": accuracy(model, params, data.x_train, data.x_test, data.y_test),
            "weight_updates": n_params * (n // batch_size) * (epoch + 1),
            "wall_time_s": wall_time,
        }
