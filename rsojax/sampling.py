"""Minibatches for RSO: a fresh batch per weight, taken in turn from shuffled passes.

As in the reference code, consecutive batches are slices of a random permutation of the
training set; when the rest of a pass is shorter than a batch, a new permutation starts.
The whole state lives on device, so sampling costs no host round-trip per weight.
"""

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax


@flax.struct.dataclass
class SamplerState:
    """Where the data stream stands: the current pass's order and position in it."""

    perm: jax.Array  # int32[N], the current pass
    pos: jax.Array  # int32, first unused position of `perm`
    passes: jax.Array  # int32, passes started so far (keys the next permutation)
    key: jax.Array


def init_sampler(key: jax.Array, n: int) -> SamplerState:
    """A stream over `n` examples, at the start of its first pass."""
    perm = jax.random.permutation(jax.random.fold_in(key, 0), n).astype(jnp.int32)
    return SamplerState(perm=perm, pos=jnp.int32(0), passes=jnp.int32(1), key=key)


def next_batch(state: SamplerState, batch_size: int) -> tuple[jax.Array, SamplerState]:
    """The indices of the next `batch_size` examples, and the advanced stream."""
    n = state.perm.shape[0]
    new_pass = state.pos + batch_size > n
    perm = lax.cond(
        new_pass,
        lambda: jax.random.permutation(jax.random.fold_in(state.key, state.passes), n).astype(jnp.int32),
        lambda: state.perm,
    )
    pos = jnp.where(new_pass, 0, state.pos)
    idx = lax.dynamic_slice(perm, (pos,), (batch_size,))
    return idx, SamplerState(
        perm=perm, pos=pos + batch_size, passes=state.passes + new_pass, key=state.key
    )
