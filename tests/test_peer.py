"""The evolution-strategy peer (evosax) on a small learnable problem."""

import jax
import jax.numpy as jnp
import pytest

import rsojax
from rsojax.data import Dataset
from rsojax.peer import run_es

pytest.importorskip("evosax")


@pytest.fixture(scope="module")
def linear_problem():
    """Labels from a fixed linear map of the inputs: an MLP can learn them."""
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (600, 5), jnp.float32)
    y = jnp.argmax(x @ jax.random.normal(kw, (5, 10)), axis=1).astype(jnp.int32)
    return rsojax.mlp(hidden=(8,), input_shape=(5,)), Dataset(x[:400], y[:400], x[400:], y[400:])


@pytest.mark.parametrize("strategy, sigma, learning_rate", [("open_es", 0.05, 0.05), ("snes", 0.05, 1.0)])
def test_es_learns_and_counts_its_images(linear_problem, strategy, sigma, learning_rate):
    model, data = linear_problem

    def run(seed):
        return [s.record for s in run_es(model, data, strategy=strategy, population_size=16, batch_size=32,
                                         images=16 * 32 * 60 + 100, sigma=sigma, learning_rate=learning_rate,
                                         records=6, seed=seed)]

    records = run(1)
    assert [r["generation"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert [r["images_forwarded"] for r in records] == [g * 16 * 32 for g in (10, 20, 30, 40, 50, 60)]
    n_params = 5 * 8 + 8 + 8 * 10 + 10
    assert records[-1]["weight_updates"] == 60 * n_params
    assert records[-1]["population_loss"] < records[0]["population_loss"] - 0.2
    assert records[-1]["test_accuracy"] > 0.3  # the most frequent label is about 0.2 of these
    assert [r["test_accuracy"] for r in run(1)] == [r["test_accuracy"] for r in records]


def test_es_arguments_are_checked(linear_problem):
    model, data = linear_problem
    with pytest.raises(ValueError, match="strategy: expected one of"):
        next(run_es(model, data, strategy="cma", images=10**6))
    with pytest.raises(ValueError, match=r"images: 100 is less than one generation \(8192 images\)"):
        next(run_es(model, data, images=100, population_size=64, batch_size=128))
