"""How RSO evaluates the three candidate losses of one weight.

An evaluator is the only part of the engine that knows how a loss is computed; sampling,
ordering and acceptance live in `rsojax.rso` and do not change with it. It has three parts:

- `prepare(params, path, data, previous=None) -> ctx`: before a layer, or a chunk of one, is
  swept (for example, cache the activations entering the layer over the whole training set).
  `previous` is the context prepared before, which it may reuse where still valid; the
  result must not depend on whether it did (resumed runs prepare from scratch).
- `refresh(ctx, params, path, j) -> ctx`: make `ctx` valid for evaluating weight `j`
  (row-major flat index) of the layer `path` under `params`; called before every `losses`.
- `losses(ctx, params, path, j, values_3, idx_B) -> losses_3`: the loss on the examples
  `idx_B` with weight `j` set to each of the three candidate values, in one batched call.

Two evaluators are here: `Generic` (any loss function) and `Cached` (a `Sequential` model
run from the cached input of the searched layer's stage, the reference code's speed-up);
`rsojax.Incremental` is the third.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from rsojax.layer_order import get_leaf, set_leaf
from rsojax.losses import summed_cross_entropy
from rsojax.models import Sequential, stage_of


class Evaluator(Protocol):
    example_shape: tuple[int, ...] | None

    def prepare(self, params, path: str, data, previous=None) -> Any: ...

    def refresh(self, ctx, params, path: str, j) -> Any: ...

    def losses(self, ctx, params, path: str, j, values_3, idx_B) -> jax.Array: ...


def with_weight(params, path: str, j, value):
    """`params` with element `j` (row-major flat index) of the array at `path` set to `value`."""
    leaf = get_leaf(params, path)
    return set_leaf(params, path, leaf.ravel().at[j].set(value).reshape(leaf.shape))


def candidate_losses(loss_fn: Callable, params, path: str, j, values_3, batch) -> jax.Array:
    """`loss_fn` on `batch` for each of the three values of weight `j`, as one vmapped call."""
    return jax.vmap(lambda v: loss_fn(with_weight(params, path, j, v), batch))(values_3)


def sequential_loss(model: Sequential, start: int = 0) -> Callable:
    """`loss(params, (x, y))` of a Sequential model in search mode, from stage `start` on; of
    any model called as `model(x, train)` (such as `ResidualNet`) with `start=0`."""
    stages = {"start": start} if start else {}

    def loss(params, batch):
        x, y = batch
        return summed_cross_entropy(model.apply({"params": params}, x, train=True, **stages), y)

    return loss


@dataclasses.dataclass(frozen=True)
class Generic:
    """Any `loss_fn(params, (x_B, y_B)) -> scalar`: every candidate runs the whole loss.

    `vmap` over the three values batches only what depends on the searched weight, so work
    before the searched layer is shared by the three candidates.
    """

    loss_fn: Callable
    example_shape: tuple[int, ...] | None = None

    def prepare(self, params, path, data, previous=None):
        del params, path, previous
        return data

    def refresh(self, ctx, params, path, j):
        del params, path, j
        return ctx

    def losses(self, ctx, params, path, j, values_3, idx_B):
        x, y = ctx
        return candidate_losses(self.loss_fn, params, path, j, values_3, (x[idx_B], y[idx_B]))


def map_chunks(fn, x: jax.Array, chunk_size: int):
    """`fn` over the examples of `x` in chunks of `chunk_size` (bounded memory), concatenated.

    `fn` maps a chunk to a pytree of arrays with the examples on axis 0.
    """
    n = x.shape[0]
    n_full = n // chunk_size
    if n_full == 0:
        return fn(x)
    out = lax.map(fn, x[: n_full * chunk_size].reshape(n_full, chunk_size, *x.shape[1:]))
    out = jax.tree.map(lambda a: a.reshape(n_full * chunk_size, *a.shape[2:]), out)
    if n_full * chunk_size < n:
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, fn(x[n_full * chunk_size :]))
    return out


def channel_major(h: jax.Array) -> jax.Array:
    """(N, ..., C) -> (C, N, ...): one channel of every example is contiguous."""
    return jnp.moveaxis(h, -1, 0)


def batch_major(h_CxN: jax.Array, idx_B: jax.Array) -> jax.Array:
    """Examples `idx_B` of a channel-major array, back in the model's layout (B, ..., C)."""
    return jnp.moveaxis(h_CxN[:, idx_B], 0, -1)


@flax.struct.dataclass
class StageInputs:
    """The input of stages 0..len(h_S)-1 for every training example, channel-major.

    Computed in one forward pass in chunks of `chunk_size` examples, BN in batch mode with
    each chunk's statistics, as the reference code caches activations (chunks of 2000).
    `h_S[d]` depends only on the parameters of the stages before d, so one pass serves every
    layer of a cycle: RSO visits the last stage first.
    """

    params: dict  # the parameters the inputs were computed with
    h_S: tuple  # h_S[d]: (C, N, ...) input of stage d
    y_N: jax.Array


@functools.partial(jax.jit, static_argnames=("model", "stages", "chunk_size"))
def _stage_inputs(model: Sequential, params, x, stages: int, chunk_size: int) -> tuple:
    def forward(x_chunk):
        h = [x_chunk]
        for d in range(stages - 1):
            h.append(model.apply({"params": params}, h[-1], train=True, start=d, stop=d + 1))
        return tuple(h)

    return tuple(channel_major(h) for h in map_chunks(forward, x, chunk_size))


def stage_inputs(model: Sequential, params, data, stage: int, chunk_size: int, previous=None) -> StageInputs:
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
    return StageInputs(params=params, h_S=_stage_inputs(model, params, x, stage + 1, chunk_size), y_N=y)


@dataclasses.dataclass(frozen=True)
class Cached:
    """A Sequential model: candidates run only the stages from the searched layer's on.

    The input of that stage over the whole training set is computed once per cycle (see
    `StageInputs`) and does not change while the layer is searched.
    """

    model: Sequential
    chunk_size: int = 2000

    @property
    def example_shape(self):
        return tuple(self.model.input_shape)

    def prepare(self, params, path, data, previous=None):
        return stage_inputs(self.model, params, data, stage_of(path), self.chunk_size, previous)

    def refresh(self, ctx, params, path, j):
        del params, path, j
        return ctx

    def losses(self, ctx, params, path, j, values_3, idx_B):
        d = stage_of(path)
        loss_fn = sequential_loss(self.model, start=d)
        return candidate_losses(loss_fn, params, path, j, values_3, (batch_major(ctx.h_S[d], idx_B), ctx.y_N[idx_B]))
