"""The evaluator protocol: how RSO computes the three candidate losses of one weight.

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
- `prepare_runs(params, path, data, previous=None) -> (ctx, axes)`, optional: `prepare` for
  several runs at once (`rsojax.RSO.init_runs`), `params` with a leading run axis. `axes`, a
  pytree prefix of `ctx`, says which parts have a leading run axis (0) and which every run
  shares (None); the engine maps `refresh` and `losses` over the runs. Without it an
  evaluator serves one run at a time.
- `refreshed(ctx) -> marks`, optional: a pytree prefix of `ctx`, True for the parts that
  `refresh` changes. A sweep donates them to its compiled loop, which updates them in place,
  and returns them in the context it ends with; they must belong to the context alone (never
  be the parameters' or the data's arrays). Without it `refresh` must return the context
  unchanged.

and two attributes: `example_shape` (the shape of one input, checked before work starts; None:
any) and `parallel_safe` (the context prepared for a layer serves every weight of it without
`refresh`, which the parallel granularities of `rsojax.parallel` need).
"""

from collections.abc import Callable
from typing import Any, Protocol

import jax

from rsojax.layer_order import get_leaf, set_leaf
from rsojax.losses import summed_cross_entropy
from rsojax.models import Sequential


class Evaluator(Protocol):
    """How RSO computes the three candidate losses of one weight (this module's docstring).

    Attributes:
      example_shape: the shape of one input, checked before work starts (None: any).
      parallel_safe: the context prepared for a layer serves every weight of it without
        `refresh` (the parallel granularities need it).
    """

    example_shape: tuple[int, ...] | None
    parallel_safe: bool

    def prepare(self, params, path: str, data, previous=None) -> Any:
        """The context for sweeping a layer, or a chunk of one, from `params`.

        Args:
          params: the parameters the sweep starts from.
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before, if any; it may be reused where still valid,
            and the result must not depend on whether it was.

        Returns:
          The context (a pytree).
        """
        ...

    def refresh(self, ctx, params, path: str, j) -> Any:
        """The context made valid for evaluating one weight; called before every `losses`.

        Args:
          ctx: the context so far.
          params: the current parameters.
          path: the layer.
          j: the weight's row-major flat index in the layer (traced).

        Returns:
          The context for weight `j`.
        """
        ...

    def losses(self, ctx, params, path: str, j, values_3, idx_B) -> jax.Array:
        """The loss on a minibatch with one weight set to each of three values, in one call.

        Args:
          ctx: the context `refresh` gave for weight `j`.
          params: the current parameters.
          path: the layer.
          j: the weight's row-major flat index in the layer (traced).
          values_3: the three candidate values, w', w' + dw, w' - dw.
          idx_B: the indices of the minibatch's examples in the training set.

        Returns:
          The three losses, summed over the minibatch.
        """
        ...

    def prepare_runs(self, params, path: str, data, previous=None) -> tuple[Any, Any]:
        """`prepare` for several runs (optional; see the module docstring).

        Args:
          params: the runs' parameters, every leaf with a leading run axis.
          path: the layer.
          data: the training set `(x, y)`, shared by the runs.
          previous: the context prepared before for these runs, if any.

        Returns:
          `(ctx, axes)`: the runs' context, and a pytree prefix of it with 0 where it has a
          leading run axis and None where the runs share it.
        """
        ...

    def refreshed(self, ctx) -> Any:
        """What `refresh` changes in a context (optional; see the module docstring).

        Args:
          ctx: a context `prepare` gave.

        Returns:
          A pytree prefix of `ctx`: True where `refresh` changes it, False elsewhere.
        """
        ...


class OfSequential:
    """Mixin of the evaluators of a `Sequential` model (field `model`): the model is checked
    when the evaluator is made, and one example has the model's input shape."""

    def __post_init__(self):
        if not isinstance(self.model, Sequential):
            raise ValueError(f"model: {type(self).__name__} needs a rsojax.Sequential model, got {type(self.model).__name__}")

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The model's input shape: the shape of one example."""
        return tuple(self.model.input_shape)


def with_weight(params, path: str, j, value):
    """`params` with element `j` (row-major flat index) of the array at `path` set to `value`."""
    leaf = get_leaf(params, path)
    return set_leaf(params, path, leaf.ravel().at[j].set(value).reshape(leaf.shape))


def candidate_losses(loss_fn: Callable, params, path: str, j, values_3, batch) -> jax.Array:
    """`loss_fn` on `batch` for each of the three values of weight `j`, as one vmapped call."""
    return jax.vmap(lambda v: loss_fn(with_weight(params, path, j, v), batch))(values_3)


def sequential_loss(model, start: int = 0) -> Callable:
    """The loss RSO searches with, in search mode (BN with the batch's statistics).

    Args:
      model: a Sequential model, or with `start=0` any model called as `model(x, train)`.
      start: the stage whose input `h` the loss starts from.

    Returns:
      `loss(params, (h, y))`: the summed cross-entropy of the model run from `h`.
    """
    stages = {"start": start} if start else {}

    def loss(params, batch):
        h, y = batch
        return summed_cross_entropy(model.apply({"params": params}, h, train=True, **stages), y)

    return loss
