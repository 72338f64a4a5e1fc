import errno
import logging
import os
import resource
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsojax.checkpoint import Checkpointer, CheckpointError, _os_error


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


def test_damaged_newest_is_set_aside_then_none_restoring_fails_clearly(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, tree(1), {"v": 1})
    ckpt.save(2, tree(2), {"v": 2})
    damage(str(tmp_path), 2)
    step, restored, meta = ckpt.restore(tree(0))
    assert step == 1 and meta == {"v": 1} and int(restored["n"]) == 3
    (aside,) = [name for name in os.listdir(tmp_path) if name.startswith("2.damaged-")]
    assert "checkpoint 2 cannot be restored" in caplog.text and os.path.join(str(tmp_path), aside) in caplog.text
    assert ckpt.steps() == [1] and os.listdir(tmp_path / aside)  # renamed, not deleted
    ckpt.save(2, tree(5), {"v": 5})  # the step can be written again
    assert ckpt.restore(tree(0))[2] == {"v": 5}

    damage(str(tmp_path), 1)
    damage(str(tmp_path), 2)
    with pytest.raises(CheckpointError, match="workdir: no checkpoint in .* can be restored .*move that directory aside"):
        ckpt.restore(tree(0))
    assert ckpt.steps() == [1, 2]  # none restores: none is set aside


def test_failed_write_names_the_step_and_keeps_the_checkpoints_before(tmp_path, caplog):
    """A write that the file system refuses is an OSError naming the step's directory. Here a
    file size limit of 64 KiB refuses TensorStore's write of a 400 KB array (EFBIG, as a full
    disk refuses with ENOSPC), in orbax's worker threads, which log it with a traceback."""
    big = {"w": jnp.arange(100_000.0, dtype=jnp.float32)}
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, big, {"v": 1})
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limits[1]))
    try:
        with pytest.raises(OSError) as failed:
            ckpt.save(2, big, {"v": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert (failed.value.errno, failed.value.filename) == (errno.EFBIG, os.path.join(str(tmp_path), "2"))
    causes, e = [], failed.value
    while e is not None:
        causes, e = [*causes, str(e)], e.__cause__
    assert any("Error writing" in c for c in causes)  # TensorStore's write failed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # the exception is the report
    assert ckpt.steps() == [1] and ckpt.restore(big)[2] == {"v": 1}
    ckpt.save(2, big, {"v": 2})  # once the file system takes writes again
    assert ckpt.restore(big)[2] == {"v": 2}


def test_os_error_is_found_in_tensorstore_text():
    """A full disk under TensorStore is a ValueError whose text holds the errno (this one is from a
    64 KiB tmpfs); an error of another kind is not taken for an OS error."""
    full = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "/tmp/small/ck/1.orbax-checkpoint-tmp/'
        'state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed writing: "/tmp/small/ck/1.orbax-checkpoint-tmp/'
        'state.orbax-checkpoint-tmp/ocdbt.process_0/d/b79146221fbd3e6313b00f7a20e042f6": Failed to write 18587 bytes '
        "to file 14: No space left on device [os_error_code='28']"
    )
    assert _os_error(full) == errno.ENOSPC
    assert _os_error(RuntimeError("wrapped")) is None
    try:
        raise RuntimeError("wrapped") from full
    except RuntimeError as e:
        assert _os_error(e) == errno.ENOSPC
    assert _os_error(ValueError("Requested shape (3,) is not compatible with the stored shape (2,)")) is None


def test_keeps_the_newest_three(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    for step in range(5):
        ckpt.save(step, tree(step), {})
    assert ckpt.steps() == [2, 3, 4]
