import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsojax
from rsojax.data import preprocess
from rsojax.train import params_sha256, run_rso, run_sgd, start_rso


def make_tiny_mnist():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 64)
    # images that carry their label, so that training has something to learn
    x = (rng.random((64, 28, 28, 1)) * 60).astype(np.uint8)
    x[np.arange(64), 2 * y, 5:20, 0] = 255
    return preprocess(x, y, x[:32], y[:32])


@pytest.fixture
def tiny_mnist():
    return make_tiny_mnist()


@pytest.fixture(scope="module")
def rso_run():
    """Two cycles of a 2-channel MNIST network in chunks of 7 weights, every step kept."""
    data = make_tiny_mnist()
    model = rsojax.mnist_convnet(channels=2)
    rso = rsojax.rso_trainer(model, rsojax.RSOConfig(batch_size=16, cycles=2))
    chunks = []
    steps = list(run_rso(rso, model, data, chunk_size=7, on_chunk=lambda d, t: chunks.append((d, t))))
    return data, model, rso, steps, chunks


def test_run_rso_records_every_layer_sweep(rso_run):
    _, model, rso, steps, chunks = rso_run
    assert isinstance(rso.evaluator, rsojax.Incremental)  # the default: the fastest exact evaluator
    records = [s.record for s in steps if s.record is not None]
    layers = model.search_order()
    assert [r["layer"] for r in records] == layers * 2
    assert [r["cycle"] for r in records] == [0] * len(layers) + [1] * len(layers)
    assert records[-1]["weight_updates"] == 2 * sum(r["n_weights"] for r in records[: len(layers)])
    assert all(b["wall_time_s"] > a["wall_time_s"] for a, b in zip(records, records[1:]))
    assert (7, 36) in chunks and (35, 36) in chunks and (36, 36) in chunks  # conv kernel 3x3x2x2 in chunks of 7
    # The images carry their label: two cycles learn something (chance is 10%).
    assert records[-1]["test_accuracy"] > 0.2


def test_records_hold_the_sweeps_metrics(rso_run):
    """A record's counts and mean batch losses are those of the engine's own sweep of the
    layer (`RSO.cycle`, in the same chunks, from the same start), per weight and example."""
    data, model, rso, steps, _ = rso_run
    start = start_rso(rso, model, data).run.state
    _, metrics = rso.cycle(start, (data.x_train, data.y_train), chunk_size=7)
    records = [s.record for s in steps if s.record is not None][: len(metrics)]
    for record, (path, m) in zip(records, metrics, strict=True):
        assert record["layer"] == path
        assert (record["n_weights"], record["accepted"], record["nonfinite"]) == (int(m.weights), int(m.accepted), 0)
        per_example = int(m.weights) * rso.config.batch_size
        assert record["batch_loss_before"] == pytest.approx(float(m.loss_before) / per_example, rel=1e-6)
        assert record["batch_loss_after"] == pytest.approx(float(m.loss_after) / per_example, rel=1e-6)
    assert any(r["batch_loss_after"] != r["batch_loss_before"] for r in records)  # not vacuous


def test_run_sgd_learns(tiny_mnist):
    model = rsojax.mnist_convnet(channels=4)
    optimizer = optax.sgd(0.05, momentum=0.9)
    records = [s.record for s in run_sgd(model, tiny_mnist, optimizer, epochs=8, batch_size=16)]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["weight_updates"] == 8 * 4 * sum(a.size for a in jax.tree.leaves(rsojax.init_params(model)))
    with pytest.raises(ValueError, match="batch_size"):
        next(run_sgd(model, tiny_mnist, optimizer, epochs=1, batch_size=1000))


def test_params_sha256_is_a_function_of_the_values():
    p = {"b": jnp.ones(3, jnp.float32), "a": {"k": jnp.zeros((2, 2), jnp.float32)}}
    same = {"a": {"k": jnp.zeros((2, 2), jnp.float32)}, "b": jnp.ones(3, jnp.float32)}
    assert params_sha256(p) == params_sha256(same)
    assert params_sha256(p) != params_sha256({**p, "b": jnp.array([1.0, 1.0, 1.0000001], jnp.float32)})


def test_resuming_from_any_step_ends_identically(rso_run):
    data, model, rso, steps, _ = rso_run
    final = steps[-1].run.state.params
    for k in (5, 23, len(steps) // 2 + 1):  # mid-layer, and later on
        resumed = list(run_rso(rso, model, data, steps[k], chunk_size=7))
        assert params_sha256(resumed[-1].run.state.params) == params_sha256(final)
        ours = [{**s.record, "wall_time_s": 0} for s in resumed if s.record]
        theirs = [{**s.record, "wall_time_s": 0} for s in steps[k + 1 :] if s.record]
        assert ours == theirs
