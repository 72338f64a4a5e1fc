"""`Uncached`: the reference code's rules with no cache; every weight runs the whole network."""

import dataclasses

import flax.struct

from rsojax.evaluators.base import OfSequential, candidate_losses, sequential_loss
from rsojax.evaluators.stage_inputs import STATS_IMAGES, prefix, reference_statistics
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
    """

    model: Sequential
    stats_images: int = STATS_IMAGES
    parallel_safe = True

    def prepare(self, params, path, data, previous=None):
        del path, previous
        return UncachedContext(data=data, stats=reference_statistics(self.model, params, data[0], self.stats_images))

    def refresh(self, ctx, params, path, j):
        del params, path, j
        return ctx

    def losses(self, ctx, params, path, j, values_3, idx_B):
        d = stage_of(path)
        x, y = ctx.data
        h_B = prefix(self.model, params, ctx.stats, x[idx_B], d)
        return candidate_losses(sequential_loss(self.model, start=d), params, path, j, values_3, (h_B, y[idx_B]))
