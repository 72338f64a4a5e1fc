"""`Cached`: candidates run only the stages from the searched layer's on (the reference's speed-up)."""

import dataclasses

from rsojax.evaluators.base import OfSequential, candidate_losses, sequential_loss
from rsojax.evaluators.stage_inputs import STATS_IMAGES, batch_major, run_axes, stage_inputs
from rsojax.models import Sequential, stage_of


@dataclasses.dataclass(frozen=True)
class Cached(OfSequential):
    """A Sequential model run from the cached input of the searched layer's stage.

    The input of that stage over the whole training set is computed once per cycle by the
    reference code's caching pass (`rsojax.evaluators.stage_inputs`) and does not change while
    the layer is searched; each candidate runs the stages from there on the weight's batch,
    BN with the batch's statistics.

    Args:
      model: a `rsojax.Sequential`.
      cache_batch: examples per forward pass of the caching pass (the same values at any size);
        None: `rsojax.evaluators.stage_inputs.default_cache_batch()`, per backend.
      stats_images: the caching pass's BN statistics come from this many first training images.
    """

    model: Sequential
    cache_batch: int | None = None
    stats_images: int = STATS_IMAGES
    parallel_safe = True

    def prepare(self, params, path, data, previous=None):
        """The inputs of every stage up to the layer's over the training set (the caching pass).

        Args:
          params: the parameters the sweep starts from.
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before, if any; its stage inputs are reused while the stages before are unchanged.

        Returns:
          The `StageInputs`.
        """
        return stage_inputs(self.model, params, data, stage_of(path), self.cache_batch, self.stats_images, previous)

    def prepare_runs(self, params, path, data, previous=None):
        """`prepare` for several runs: each run's stage inputs; the training set is shared.

        Args:
          params: the runs' parameters (leading run axis).
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before for these runs, if any; reused as by `prepare`.

        Returns:
          `(StageInputs, axes)`.
        """
        inputs = stage_inputs(self.model, params, data, stage_of(path), self.cache_batch, self.stats_images, previous, runs=True)
        return inputs, run_axes(inputs)

    def refresh(self, ctx, params, path, j):
        """The context unchanged: the searched stage's input does not depend on the layer.

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
        """The stages from the layer's on, from the minibatch's cached inputs, per candidate.

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
        d = stage_of(path)
        batch = (batch_major(ctx.h_S[d], idx_B), ctx.y_N[idx_B])
        return candidate_losses(sequential_loss(self.model, start=d), params, path, j, values_3, batch)
