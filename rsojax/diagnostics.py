"""The decisions RSO would take from one state, and how two configurations differ on them.

RSO (Tripathi & Singh, arXiv 2005.05955, Algorithm 1) keeps, for each weight, the first
lowest finite loss of w', w' + dw, w' - dw on the weight's minibatch. `candidates` computes
those three values and losses for weights at chosen visit positions of one layer, every one
from the same state (no update between them), with the engine's dw, minibatch, weight decay
and precision (`rsojax.rso.RSO`); `decisions` is the choice each would get. Comparing two
`RSO` objects that differ in one setting on the same weights isolates that setting's effect
on the search: `agreement` does it for precision (does the backend's default precision, TF32
on NVIDIA GPUs, choose as full float32 does?).

Deciding every weight from one state needs an evaluator whose context serves every weight of
the layer without a per-weight `refresh` (`parallel_safe`: `Cached`, `Generic`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rsojax.layer_order import get_leaf
from rsojax.precision import precision_scope
from rsojax.rso import RSO, RSOState, candidate_values, choose
from rsojax.sharding import shard_batch


def candidates(rso: RSO, state: RSOState, data, path: str, positions) -> tuple[jax.Array, jax.Array]:
    """The candidate values and losses of the weights at visit positions `positions` of layer
    `path`, each from `state` alone.

    Args:
      rso: the engine (its evaluator must be `parallel_safe`).
      state: the state every weight is evaluated from.
      data: the training set `(x, y)` the state was initialised with.
      path: the layer.
      positions: visit positions (`rsojax.weight_order`) inside the layer.

    Returns:
      values_Px3 (w', w' + dw, w' - dw) and their losses_Px3 on each weight's minibatch.

    Raises:
      ValueError: the evaluator is not `parallel_safe`, `rso` does not search `path`, or a
        position is out of range.
    """
    if not rso.evaluator.parallel_safe:
        raise ValueError(
            f"evaluator: {type(rso.evaluator).__name__} refreshes its context one weight at a time, so it cannot "
            "evaluate weights from one state; use Cached (the same losses) or Generic"
        )
    ctx = rso.prepare(state, data, path)  # validates data and path
    positions_P = np.asarray(positions, np.int32).reshape(-1)
    n = rso.n_weights(state, path)
    if positions_P.size and not 0 <= positions_P.min() <= positions_P.max() < n:
        raise ValueError(f"positions: expected visit positions in 0..{n - 1} of {path}, got {positions_P.tolist()}")
    with precision_scope(rso.config.precision):
        return _candidates(rso, state, ctx, rso.layer_draws(state, path), jnp.asarray(positions_P), path)


@functools.partial(jax.jit, static_argnames=("rso", "path"))
def _candidates(rso: RSO, state: RSOState, ctx, draws, positions_P, path: str):
    order, dw, batch = rso.draws(state, path, draws)  # the engine's own draws
    flat = get_leaf(state.params, path).ravel()

    def one(i):
        j = order[i]
        values_3 = candidate_values(flat[j], dw(i), rso.weight_keep(state))
        idx_B = shard_batch(batch(i), rso.mesh)
        return values_3, rso.evaluator.losses(ctx, state.params, path, j, values_3, idx_B)

    # parallel_vmap weights at a time: memory grows with it (three candidate batches each).
    return lax.map(one, positions_P, batch_size=min(rso.config.parallel_vmap, max(positions_P.shape[0], 1)))


def decisions(rso: RSO, state: RSOState, data, path: str, positions) -> jax.Array:
    """The candidate RSO would keep for each weight at `positions` of layer `path`, each
    decided from `state` (`candidates`): 0 for w', 1 for w' + dw, 2 for w' - dw, -1 if no
    loss is finite (the weight is kept). int32[len(positions)]."""
    _, losses_Px3 = candidates(rso, state, data, path, positions)
    return jax.vmap(choose)(losses_Px3).astype(jnp.int32)


def agreement(rso_a: RSO, rso_b: RSO, state: RSOState, data, path: str, positions) -> dict:
    """How often two engines (say, two precisions) take the same decision on the same weights.

    Returns:
      A dict: `weights`, `agree` (same decision), `agreement` (their ratio); over the weights
      where `rso_a` has two finite losses, `median_loss_error` (median |loss_b - loss_a| over
      every candidate) and `median_gap` (median difference between `rso_a`'s two lowest
      losses): decisions follow rounding when the error approaches the gap.
    """
    _, losses_a = candidates(rso_a, state, data, path, positions)
    _, losses_b = candidates(rso_b, state, data, path, positions)
    a, b = np.asarray(losses_a, np.float64), np.asarray(losses_b, np.float64)
    choice_a, choice_b = np.asarray(jax.vmap(choose)(losses_a)), np.asarray(jax.vmap(choose)(losses_b))
    finite = np.isfinite(a).sum(axis=1) >= 2
    low2 = np.sort(np.where(np.isfinite(a), a, np.inf), axis=1)[finite, :2]
    agree = int((choice_a == choice_b).sum())
    return {
        "weights": int(choice_a.size),
        "agree": agree,
        "agreement": agree / max(choice_a.size, 1),
        "median_loss_error": float(np.nanmedian(np.abs(b - a)[finite])) if finite.any() else float("nan"),
        "median_gap": float(np.median(low2[:, 1] - low2[:, 0])) if finite.any() else float("nan"),
    }
