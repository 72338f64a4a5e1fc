"""How RSO evaluates the three candidate losses of one weight: the evaluators and their registry.

- `Incremental` (`incremental.py`): exact rank-one and one-channel shortcuts; the fastest.
- `Cached` (`cached.py`): candidates run from the cached input of the searched stage, the
  reference code's speed-up; the cache is `stage_inputs.py`, the reference's caching pass.
- `Uncached` (`uncached.py`): the same losses with no cache, the whole network per weight.
- `Generic` (`generic.py`): any loss function.

The protocol they share is in `base.py`. `EVALUATORS` names one per evaluation path for a
model, fastest first; command lines, benchmarks and tests loop over it.
"""

from collections.abc import Callable

from rsojax.evaluators.base import Evaluator, candidate_losses, sequential_loss, with_weight
from rsojax.evaluators.cached import Cached
from rsojax.evaluators.generic import Generic
from rsojax.evaluators.incremental import Incremental
from rsojax.evaluators.stage_inputs import StageInputs, stage_inputs
from rsojax.evaluators.uncached import Uncached
from rsojax.models import Sequential


def generic(model) -> Evaluator:
    """The whole network per weight: `Uncached` for a Sequential model (the reference's rules),
    `Generic` over the model's search-mode loss for any other."""
    if isinstance(model, Sequential):
        return Uncached(model)
    return Generic(sequential_loss(model), tuple(model.input_shape))


EVALUATORS: dict[str, Callable] = {"incremental": Incremental, "cached": Cached, "generic": generic}
"""Name -> a function of the model giving the evaluator, the fastest first. All take the same
decisions; `incremental` and `cached` need a `Sequential` model, `generic` takes any."""


def applicable(model) -> list[str]:
    """The names of `EVALUATORS` that can search `model`, fastest first."""
    return list(EVALUATORS) if isinstance(model, Sequential) else ["generic"]


def default_evaluator(model, granularity: str = "weight") -> Evaluator:
    """The fastest evaluator for `model` that supports `granularity` (`RSOConfig.granularity`)."""
    for name in applicable(model):
        evaluator = EVALUATORS[name](model)
        if granularity == "weight" or evaluator.parallel_safe:
            return evaluator
    raise ValueError(f"model: no evaluator supports granularity {granularity!r}")


__all__ = [
    "EVALUATORS",
    "Cached",
    "Evaluator",
    "Generic",
    "Incremental",
    "StageInputs",
    "Uncached",
    "applicable",
    "candidate_losses",
    "default_evaluator",
    "generic",
    "sequential_loss",
    "stage_inputs",
    "with_weight",
]
