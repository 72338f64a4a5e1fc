"""Minibatches for RSO: the reference code's stream, a pure function of (cycle, block, position).

Before each block of layers (a conv block: its kernel, BN beta and BN gamma; the dense head)
the reference code shuffles the training set once and cuts it into n_B = N // B fixed
batches; the weight at visit position i of a layer gets batch i mod n_B (its iterator wraps
around without reshuffling), and each layer of the block starts again at batch 0. The
examples past the last whole batch are not used in that block. (train.py: ShuffleIter,
BasicIter.)

Here the shuffle is keyed by (cycle, block): the stream has no state to carry, save or
restore, any chunk of a sweep finds its batches from its positions alone, and the parallel
schemes give a weight the batch it gets one weight at a time.
"""

import jax
import jax.numpy as jnp
from jax import lax


def block_permutation(key: jax.Array, cycle, block, n: int) -> jax.Array:
    """The shuffle of `n` examples before block `block` (an int, may be traced) of cycle `cycle`."""
    return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, cycle), block), n).astype(jnp.int32)


def batch_at(perm_N: jax.Array, i, batch_size: int) -> jax.Array:
    """The example indices of visit position `i`: batch i mod (N // batch_size) of the shuffle."""
    n_batches = perm_N.shape[0] // batch_size
    return lax.dynamic_slice(perm_N, ((i % n_batches) * batch_size,), (batch_size,))
