"""`rsojax.memory`: the contexts' bytes, counted from shapes, and the refusal of runs that do not fit."""

import jax
import jax.numpy as jnp
import pytest

import rsojax
from rsojax import memory

N = 100


def cached_runs(runs):
    model = rsojax.mnist_convnet(channels=2)
    x, y = jnp.zeros((N, 28, 28, 1), jnp.float32), jnp.zeros((N,), jnp.int32)
    params = model.init(jax.random.key(0), x[:2], train=True)["params"]
    rso = rsojax.RSO(rsojax.Cached(model), model.search_order(), rsojax.RSOConfig(batch_size=10))
    stacked = jax.tree.map(lambda a: jnp.stack([a] * runs), params)
    state = rso.init_runs(stacked, jnp.stack([jax.random.key(k) for k in range(runs)]), (x, y))
    return rso, state, (x, y), sum(a.nbytes for a in jax.tree.leaves(params))


def test_context_bytes_count_each_runs_caches_and_the_shared_images_once():
    with jax.enable_x64(False):  # float32 caches, as users run
        rso, state, data, param_bytes = cached_runs(3)
        shared, per_run = memory.context_bytes(rso, state, data)
    # The head's context, the largest: the input of every stage after the first (2 channels,
    # 28x28, then 14x14 and 7x7 after the pools), float32, and the parameters they came from.
    assert per_run == N * 4 * 2 * (28 * 28 + 2 * 14 * 14 + 3 * 7 * 7) + param_bytes
    assert shared == N * 4 * 28 * 28 + N * 4  # the images (channel-major) and the labels, once


def test_runs_that_do_not_fit_are_refused_with_how_many_fit(monkeypatch):
    rso, state, data, _ = cached_runs(3)
    shared, per_run = memory.context_bytes(rso, state, data)
    data_bytes = sum(a.nbytes for a in data)
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: data_bytes + shared + 2 * per_run + 1)
    with pytest.raises(ValueError, match=r"^runs: 3 run\(s\) need about .* 2 run\(s\) fit"):
        memory.check_fits(rso, state, data)
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: data_bytes + shared + 3 * per_run)
    memory.check_fits(rso, state, data)  # exactly enough
