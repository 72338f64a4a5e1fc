"""The reference code's minibatch stream (`rsojax.sampling`)."""

import jax
import numpy as np

from rsojax.sampling import batch_at, block_permutation


def test_fixed_batches_of_one_shuffle_wrap_around():
    perm = block_permutation(jax.random.key(0), 3, 1, 10)
    assert sorted(np.asarray(perm).tolist()) == list(range(10))
    batches = [np.asarray(batch_at(perm, i, 4)).tolist() for i in range(5)]
    # 10 // 4 = 2 fixed batches: positions 0, 2, 4 take the first, 1 and 3 the second; the
    # last 2 examples of the shuffle are not used.
    assert batches[0] == batches[2] == batches[4] == np.asarray(perm[:4]).tolist()
    assert batches[1] == batches[3] == np.asarray(perm[4:8]).tolist()


def test_shuffle_is_keyed_by_cycle_and_block():
    key = jax.random.key(5)
    same = block_permutation(key, 2, 7, 100), block_permutation(key, 2, 7, 100)
    np.testing.assert_array_equal(*same)
    for other in (block_permutation(key, 3, 7, 100), block_permutation(key, 2, 8, 100),
                  block_permutation(jax.random.key(6), 2, 7, 100)):
        assert not np.array_equal(same[0], other)
