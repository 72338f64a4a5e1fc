import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsojax.checkpoint import CheckpointError, Checkpointer


def tree(scale):
    return {"key": jax.random.key(7), "w": jnp.arange(6.0).reshape(2, 3) * scale, "n": jnp.int32(3 * scale)}


def damage(directory, step):
    for root, _, files in os.walk(os.path.join(directory, str(step))):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")


def test_round_trip_keeps_values_dtypes_and_keys(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.restore(tree(1)) is None
    ckpt.save(4, tree(2), {"records": [{"a": 1.5}], "finished": False})
    step, restored, meta = ckpt.restore(tree(1))
    assert step == 4 and meta == {"records": [{"a": 1.5}], "finished": False}
    np.testing.assert_array_equal(restored["w"], tree(2)["w"])
    assert restored["n"].dtype == jnp.int32 and int(restored["n"]) == 6
    np.testing.assert_array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(tree(2)["key"]))
    assert jax.random.normal(restored["key"]) == jax.random.normal(tree(2)["key"])


def test_damaged_newest_falls_back_then_fails_clearly(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, tree(1), {"v": 1})
    ckpt.save(2, tree(2), {"v": 2})
    damage(str(tmp_path), 2)
    step, restored, meta = ckpt.restore(tree(0))
    assert step == 1 and meta == {"v": 1} and int(restored["n"]) == 3
    damage(str(tmp_path), 1)
    with pytest.raises(CheckpointError, match="workdir: no checkpoint in .* could be read"):
        ckpt.restore(tree(0))


def test_keeps_the_newest_three(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    for step in range(5):
        ckpt.save(step, tree(step), {})
    assert ckpt.steps() == [2, 3, 4]
