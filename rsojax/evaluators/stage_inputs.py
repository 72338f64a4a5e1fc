"""The reference code's caching pass: every stage's input over the whole training set.

Before a layer is searched, the reference computes the activations entering it for the whole
training set (in passes of 2000 images) and starts every candidate evaluation there. That
pass runs outside autograd, so its BN layers are in inference mode, with the statistics just
reset from the first 2000 training images (the statistics test evaluation uses), not each
pass's own. `h_S[d]` depends only on the parameters of the stages before d (their statistics
too), so one pass serves every layer of a cycle: RSO visits the last stage first.

The inputs are stored channel-major, (C, N, ...): one channel of every example is contiguous,
which is what `Incremental` reads. A stage input that is a pytree (the residual network's
`(h, skip)`) is stored leaf by leaf.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from rsojax.evaluation import bn_statistics
from rsojax.models import Sequential

STATS_IMAGES = 2000  # the reference code's BN statistics: the first 2000 training images
CACHE_BATCH = 2000  # examples per forward pass of the caching pass (bounds memory only)


def map_batches(fn, x: jax.Array, size: int):
    """`fn` over the examples of `x` in passes of `size` (bounded memory), concatenated.

    `fn` maps a pass to a pytree of arrays with the examples on axis 0.
    """
    n = x.shape[0]
    n_full = n // size
    if n_full == 0:
        return fn(x)
    out = lax.map(fn, x[: n_full * size].reshape(n_full, size, *x.shape[1:]))
    out = jax.tree.map(lambda a: a.reshape(n_full * size, *a.shape[2:]), out)
    if n_full * size < n:
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, fn(x[n_full * size :]))
    return out


def channel_major(h):
    """(N, ..., C) -> (C, N, ...) for every array of the pytree `h`: one channel of every
    example is contiguous."""
    return jax.tree.map(lambda a: jnp.moveaxis(a, -1, 0), h)


def batch_major(h_CxN, idx_B: jax.Array):
    """Examples `idx_B` of a channel-major array (or pytree of them), back in the model's
    layout (B, ..., C)."""
    return jax.tree.map(lambda a: jnp.moveaxis(a[:, idx_B], 0, -1), h_CxN)


@functools.partial(jax.jit, static_argnames=("model", "stats_images"))
def reference_statistics(model: Sequential, params, x_N: jax.Array, stats_images: int = STATS_IMAGES) -> dict:
    """The `batch_stats` of every BN layer over the first `stats_images` training images."""
    return bn_statistics(model, params, x_N[:stats_images])


def prefix(model: Sequential, params, stats: dict, x_B: jax.Array, stop: int):
    """Stages 0..`stop - 1` in inference mode with `stats`: the caching pass for a batch."""
    return model.apply({"params": params, "batch_stats": stats}, x_B, train=False, stop=stop)


@flax.struct.dataclass
class StageInputs:
    """The input of stages 0..len(h_S)-1 for every training example, channel-major."""

    params: dict  # the parameters the inputs were computed with
    h_S: tuple  # h_S[d]: (C, N, ...) input of stage d (a pytree of such arrays where it is one)
    y_N: jax.Array


@functools.partial(jax.jit, static_argnames=("model", "stages", "cache_batch", "stats_images"))
def _stage_inputs(model: Sequential, params, x, stages: int, cache_batch: int, stats_images: int) -> tuple:
    stats = reference_statistics(model, params, x, stats_images)

    def forward(x_pass):
        h = [x_pass]
        for d in range(stages - 1):
            h.append(model.apply({"params": params, "batch_stats": stats}, h[-1], train=False, start=d, stop=d + 1))
        return tuple(h)

    return tuple(channel_major(h) for h in map_batches(forward, x, cache_batch))


def stage_inputs(
    model: Sequential,
    params,
    data,
    stage: int,
    cache_batch: int = CACHE_BATCH,
    stats_images: int = STATS_IMAGES,
    previous=None,
) -> StageInputs:
    """The inputs of stages 0..`stage`, reusing those of `previous` (a `StageInputs`, or a
    context with one as `.inputs`) if the stages before are unchanged."""
    previous = getattr(previous, "inputs", previous)
    if (
        isinstance(previous, StageInputs)
        and len(previous.h_S) > stage
        and all(
            bool(jnp.array_equal(a, b))
            for d in range(stage)
            for a, b in zip(jax.tree.leaves(params[f"stages_{d}"]), jax.tree.leaves(previous.params[f"stages_{d}"]))
        )
    ):
        # Only the inputs of stages up to `stage` stay valid once it changes: drop the rest.
        return previous.replace(h_S=previous.h_S[: stage + 1])
    x, y = data
    return StageInputs(params=params, h_S=_stage_inputs(model, params, x, stage + 1, cache_batch, stats_images), y_N=y)
