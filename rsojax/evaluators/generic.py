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
    """

    loss_fn: Callable
    example_shape: tuple[int, ...] | None = None
    parallel_safe = True

    def prepare(self, params, path, data, previous=None):
        del params, path, previous
        return data

    def refresh(self, ctx, params, path, j):
        del params, path, j
        return ctx

    def losses(self, ctx, params, path, j, values_3, idx_B):
        x, y = ctx
        return candidate_losses(self.loss_fn, params, path, j, values_3, (x[idx_B], y[idx_B]))
