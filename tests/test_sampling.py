import jax
import numpy as np

from rsojax.sampling import init_sampler, next_batch


def test_batches_are_disjoint_within_a_pass_and_a_new_pass_starts():
    state = init_sampler(jax.random.key(0), 10)
    first_pass = state.perm
    a, state = next_batch(state, 4)
    b, state = next_batch(state, 4)
    assert len(set(np.asarray(a)) | set(np.asarray(b))) == 8
    np.testing.assert_array_equal(np.concatenate([a, b]), first_pass[:8])
    c, state = next_batch(state, 4)  # only 2 left: a new permutation starts
    assert int(state.passes) == 2 and int(state.pos) == 4
    assert not np.array_equal(state.perm, first_pass)
    np.testing.assert_array_equal(c, state.perm[:4])


def test_same_key_same_stream():
    s1, s2 = init_sampler(jax.random.key(5), 100), init_sampler(jax.random.key(5), 100)
    for _ in range(30):
        i1, s1 = next_batch(s1, 33)
        i2, s2 = next_batch(s2, 33)
        np.testing.assert_array_equal(i1, i2)
    i3, _ = next_batch(init_sampler(jax.random.key(6), 100), 33)
    assert not np.array_equal(next_batch(init_sampler(jax.random.key(5), 100), 33)[0], i3)
