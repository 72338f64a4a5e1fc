"""`Uncached`: the reference code's rules with no cache; every weight runs the whole network."""

import dataclasses

import flax.struct

from rsojax.evaluators.base import OfSequential, candidate_losses, sequential_loss
from rsojax.evaluators.stage_inputs import STATS_IMAGES, prefix, reference_statistics, reference_statistics_runs
from rsojax.models import Sequential, stage_of


@flax.struct.dataclass
class UncachedContext:
    data: tuple  # (x_N, y_N), the training set
    stats: dict  # BN statistics of the first training images, for the stages before the layer


@dataclasses.dataclass(frozen=True)
class Uncached(OfSequential):
    """A Sequential model whose candidates run the whole network from the images.

    The same losses as `Cached` (the stages before the searched one in inference mode with the
    BN statistics of the first `stats_images` training images, as the reference's caching pass;
    the rest with the batch's statistics), with that prefix recomputed on every weight's batch
    instead of cached: the slow, simple path the others are checked against (`--evaluator
    generic`). The prefix does not depend on the searched weight, so the three candidates
    share it.

    Args:
      model: a `rsojax.Sequential`.
      stats_images: the BN statistics of the stages before the searched one come from this
        many first training images.
    """

    model: Sequential
    stats_images: int = STATS_IMAGES
    parallel_safe = True

    def prepare(self, params, path, data, previous=None):
        """The training set and the BN statistics of its first `stats_images` images.

        Args:
          params: the parameters the sweep starts from.
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before, if any (unused).

        Returns:
          An `UncachedContext`.
        """
        del path, previous
        return UncachedContext(data=data, stats=reference_statistics(self.model, params, data[0], self.stats_images))

    def prepare_runs(self, params, path, data, previous=None):
        """`prepare` for several runs: the training set, shared, and each run's statistics.

        Args:
          params: the runs' parameters (leading run axis).
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before, if any (unused).

        Returns:
          `(UncachedContext, axes)`.
        """
        del path, previous
        stats = reference_statistics_runs(self.model, params, data[0], self.stats_images)
        return UncachedContext(data=data, stats=stats), UncachedContext(data=None, stats=0)

    def refresh(self, ctx, params, path, j):
        """The context unchanged: nothing in it depends on the searched layer.

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
        """The stages before the layer's on the minibatch's images, then the rest per candidate.

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
        x, y = ctx.data
        h_B = prefix(self.model, params, ctx.stats, x[idx_B], d)
        return candidate_losses(sequential_loss(self.model, start=d), params, path, j, values_3, (h_B, y[idx_B]))
