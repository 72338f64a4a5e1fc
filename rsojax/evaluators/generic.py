"""`Generic`: any loss function; every candidate runs all of it."""

import dataclasses
from collections.abc import Callable

from rsojax.evaluators.base import candidate_losses


@dataclasses.dataclass(frozen=True)
class Generic:
    """Any `loss_fn(params, (x_B, y_B)) -> scalar`: every candidate runs the whole loss.

    `vmap` over the three values batches only what depends on the searched weight, so work
    before the searched layer is shared by the three candidates. For a `Sequential` model,
    `Uncached` computes the loss under the reference code's rules; `Generic` is for anything
    else (a model that is not a `Sequential`, a custom loss).

    Args:
      loss_fn: `loss_fn(params, (x_B, y_B)) -> scalar`, the loss on a minibatch.
      example_shape: the shape of one input, checked before work starts (None: any).
    """

    loss_fn: Callable
    example_shape: tuple[int, ...] | None = None
    parallel_safe = True

    def prepare(self, params, path, data, previous=None):
        """The training set itself: every candidate runs the whole loss.

        Args:
          params: the parameters the sweep starts from.
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before, if any (unused).

        Returns:
          `data`.
        """
        del params, path, previous
        return data

    def prepare_runs(self, params, path, data, previous=None):
        """The training set, which the runs share.

        Args:
          params: the runs' parameters (leading run axis).
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before, if any (unused).

        Returns:
          `(data, None)`.
        """
        return self.prepare(params, path, data, previous), None

    def refresh(self, ctx, params, path, j):
        """The context unchanged: it holds only the training set.

        Args:
          ctx: the context so far.
          params: the current parameters.
          path: the layer.
          j: the weight's row-major flat index in the layer (traced).

        Returns:
          `ctx`.
        """
        del params, path, j
        return ctx

    def losses(self, ctx, params, path, j, values_3, idx_B):
        """`loss_fn` on the minibatch for each candidate, vmapped over the three.

        Args:
          ctx: the context for weight `j`.
          params: the current parameters.
          path: the layer.
          j: the weight's row-major flat index in the layer (traced).
          values_3: the three candidate values, w', w' + dw, w' - dw.
          idx_B: the indices of the minibatch's examples in the training set.

        Returns:
          The three losses, summed over the minibatch.
        """
        x, y = ctx
        return candidate_losses(self.loss_fn, params, path, j, values_3, (x[idx_B], y[idx_B]))
