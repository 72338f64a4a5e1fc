"""How RSO evaluates the three candidate losses of one weight.

An evaluator is the only part of the engine that knows how a loss is computed; sampling,
ordering and acceptance live in `rsojax.rso` and do not change with it. It has three parts:

- `prepare(params, path, data) -> ctx`: once per layer visit (for example, cache the
  activations entering the layer over the whole training set);
- `losses(ctx, params, path, j, values_3, idx_B) -> losses_3`: the loss on the examples
  `idx_B` with weight `j` (row-major flat index) of the layer `path` set to each of the three
  candidate values, in one batched call;
- `update(ctx, params, path, j, old, new) -> ctx`: keep `ctx` consistent after weight `j`
  changed from `old` to `new` (`params` already holds `new`).

Two evaluators are here: `Generic` (any loss function) and `Cached` (a `Sequential` model
run from the cached input of the searched layer's stage, the reference code's speed-up).
"""

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax import lax

from rsojax.layer_order import get_leaf, set_leaf
from rsojax.losses import summed_cross_entropy
from rsojax.models import Sequential, stage_of


class Evaluator(Protocol):
    example_shape: tuple[int, ...] | None

    def prepare(self, params, path: str, data) -> Any: ...

    def losses(self, ctx, params, path: str, j, values_3, idx_B) -> jax.Array: ...

    def update(self, ctx, params, path: str, j, old, new) -> Any: ...


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

    def prepare(self, params, path, data):
        del params, path
        return data

    def losses(self, ctx, params, path, j, values_3, idx_B):
        x, y = ctx
        return candidate_losses(self.loss_fn, params, path, j, values_3, (x[idx_B], y[idx_B]))

    def update(self, ctx, params, path, j, old, new):
        del params, path, j, old, new
        return ctx


def stage_inputs(model: Sequential, params, x, stage: int, chunk_size: int) -> jax.Array:
    """The input of `stage` for every example of `x`, computed in chunks of `chunk_size`.

    BN runs in batch mode with the statistics of each chunk, as the reference code caches
    activations (chunks of 2000 images).
    """
    if stage == 0:
        return x

    def prefix(x_chunk):
        return model.apply({"params": params}, x_chunk, train=True, stop=stage)

    n = x.shape[0]
    n_full = n // chunk_size
    if n_full == 0:
        return prefix(x)
    full = x[: n_full * chunk_size].reshape(n_full, chunk_size, *x.shape[1:])
    h = lax.map(prefix, full)
    h = h.reshape(n_full * chunk_size, *h.shape[2:])
    if n_full * chunk_size < n:
        h = jnp.concatenate([h, prefix(x[n_full * chunk_size:])])
    return h


@dataclasses.dataclass(frozen=True)
class Cached:
    """A Sequential model: candidates run only the stages from the searched layer's on.

    The input of that stage over the whole training set is computed once per layer visit
    (`prepare`) and does not change while the layer is searched.
    """

    model: Sequential
    chunk_size: int = 2000

    @property
    def example_shape(self):
        return tuple(self.model.input_shape)

    def prepare(self, params, path, data):
        x, y = data
        return stage_inputs(self.model, params, x, stage_of(path), self.chunk_size), y

    def losses(self, ctx, params, path, j, values_3, idx_B):
        h, y = ctx
        loss_fn = sequential_loss(self.model, start=stage_of(path))
        return candidate_losses(loss_fn, params, path, j, values_3, (h[idx_B], y[idx_B]))

    def update(self, ctx, params, path, j, old, new):
        del params, path, j, old, new
        return ctx
