"""A gradient-free peer for RSO: evolution strategies from evosax on the same network and data.

OpenAI-ES (Salimans et al., arXiv 1703.03864) and SNES (Schaul et al., GECCO 2011), from
evosax (Lange, arXiv 2212.04180; `pip install 'rsojax[peer]'`), search the whole parameter
vector of the model at once: each generation samples `population_size` parameter vectors
around a mean, scores each by the loss on one shared minibatch, and moves the mean. The loss
is the one RSO minimises (softmax cross-entropy, BN with the batch's statistics) averaged
over the batch; test accuracy is measured as for RSO (`rsojax.evaluation.accuracy`).

Budgets are compared in images forwarded: one loss evaluation on a batch of B images
forwards B. An RSO weight visit evaluates three candidates (3 B); an ES generation
evaluates the population (population_size B).
"""

import time
from collections.abc import Iterator

import jax
import optax

from rsojax.data import Dataset
from rsojax.evaluation import accuracy
from rsojax.losses import summed_cross_entropy
from rsojax.train import INIT_SEED, SEED, Step, init_params


def strategies() -> dict:
    """name -> evosax algorithm class; evosax is imported only when a peer is used."""
    try:
        from evosax.algorithms import SNES, Open_ES
    except ImportError as e:
        raise ImportError(f"the ES peer needs evosax: pip install 'rsojax[peer]' ({e})") from None
    return {"open_es": Open_ES, "snes": SNES}


def make_strategy(name: str, params, population_size: int, sigma: float, learning_rate: float):
    """The evosax algorithm `name` over a pytree like `params`, and its hyperparameters.

    OpenAI-ES: fixed search std `sigma`, Adam on the mean with `learning_rate`. SNES: initial
    std `sigma`, its own natural-gradient steps (mean learning rate `learning_rate`).
    """
    algorithms = strategies()
    if name not in algorithms:
        raise ValueError(f"strategy: expected one of {sorted(algorithms)}, got {name!r}")
    if name == "open_es":
        es = algorithms[name](
            population_size, params, optimizer=optax.adam(learning_rate), std_schedule=optax.constant_schedule(sigma)
        )
        return es, es.default_params
    es = algorithms[name](population_size, params, optimizer=optax.sgd(learning_rate))
    return es, es.default_params.replace(std_init=sigma)


def run_es(
    model,
    data: Dataset,
    *,
    strategy: str = "open_es",
    population_size: int = 64,
    batch_size: int = 128,
    images: int,
    sigma: float = 0.02,
    learning_rate: float = 0.01,
    records: int = 20,
    seed: int = SEED,
    init_seed: int = INIT_SEED,
) -> Iterator[Step]:
    """Runs an ES from the model's initial parameters until `images` images are forwarded.

    Yields a `Step` with a record about `records` times (and after the last generation). A
    record's `weight_updates` counts every parameter once per generation, as for SGD.
    """
    n = data.x_train.shape[0]
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size: expected 1..{n} (the training set size), got {batch_size}")
    params = init_params(model, init_seed)
    es, es_params = make_strategy(strategy, params, population_size, sigma, learning_rate)
    generations = images // (population_size * batch_size)
    if generations < 1:
        raise ValueError(f"images: {images} is less than one generation ({population_size * batch_size} images)")
    n_params = sum(a.size for a in jax.tree.leaves(params))

    def loss(p, x, y):
        return summed_cross_entropy(model.apply({"params": p}, x, train=True), y) / x.shape[0]

    @jax.jit
    def generation(state, key):
        k_batch, k_ask, k_tell = jax.random.split(key, 3)
        idx = jax.random.choice(k_batch, n, (batch_size,), replace=False)
        x, y = data.x_train[idx], data.y_train[idx]
        population, state = es.ask(k_ask, state, es_params)
        # One member at a time: a vmapped conv with a kernel per member is slow on CPU.
        fitness = jax.lax.map(lambda p: loss(p, x, y), population)
        state, _ = es.tell(k_tell, population, fitness, state, es_params)
        return state, fitness.mean()

    init_key, key = jax.random.split(jax.random.key(seed))
    state = es.init(init_key, params, es_params)
    every = max(generations // records, 1)
    wall_time = 0.0
    for g in range(generations):
        tic = time.perf_counter()
        state, mean_fitness = generation(state, jax.random.fold_in(key, g))
        jax.block_until_ready(state)
        wall_time += time.perf_counter() - tic
        if (g + 1) % every == 0 or g + 1 == generations:
            mean = es.get_mean(state)
            record = {
                "generation": g + 1,
                "progress": (g + 1) / generations,
                "population_loss": float(mean_fitness),
                "test_accuracy": accuracy(model, mean, data.x_train, data.x_test, data.y_test),
                "images_forwarded": (g + 1) * population_size * batch_size,
                "weight_updates": (g + 1) * n_params,
                "wall_time_s": wall_time,
            }
            yield Step(state, record["weight_updates"], wall_time, record)
