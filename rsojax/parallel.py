"""The paper's parallel update schemes for RSO (Tripathi & Singh, arXiv 2005.05955, Section 3).

Both schemes split a layer into independent threads, run each thread as Algorithm 1 from the
parameters at the start of the layer, and merge the threads' weights (the threads touch
disjoint weights, so the merge is a scatter):

- "layer": every weight is its own thread: all weights of the layer are searched in parallel,
  each against the state at the start of the layer.
- "neuron": one thread per output neuron (the last axis of a kernel; every element of a
  vector), which visits that neuron's weights in order (input channel, then kernel row and
  column), each step seeing its own earlier steps but no other thread's.

A weight gets the same dw and minibatch as under one-weight-at-a-time search: both are keyed
by its position in the (output-first) visit order. The threads are vmapped, `parallel_vmap`
at a time (`lax.map` with `batch_size`), and each step reuses the evaluator's `losses`. Every
thread uses the context prepared for the layer, unchanged: exact for evaluators whose context
depends only on the layers before the searched one (`Cached`, `Generic`).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from rsojax.layer_order import get_leaf, set_leaf

GRANULARITIES = ("weight", "layer", "neuron")


def threads(shape: tuple[int, ...], granularity: str) -> tuple[int, int]:
    """(threads, steps per thread) of a parameter array of `shape` under a parallel granularity."""
    size = math.prod(shape)
    if granularity == "layer" or len(shape) < 2:
        return size, 1
    return shape[-1], size // shape[-1]


def parallel_sweep(
    search: Callable,
    params,
    path: str,
    order_N: jax.Array,
    dw: Callable,
    batch: Callable,
    granularity: str,
    vmap_size: int,
    zero_metrics,
):
    """One layer under the "layer" or "neuron" scheme.

    Args:
      search: `(params, j, dw_j, idx_B) -> (new value of weight j, metrics)`, Algorithm 1's step.
      params: the parameters at the start of the layer.
      path: the layer.
      order_N: row-major flat indices in output-first visit order (neurons are contiguous).
      dw: `i -> dw` of the weight at visit position `i`.
      batch: `i -> idx_B`, the minibatch of the weight at visit position `i`.
      granularity, vmap_size: from `RSOConfig`.
      zero_metrics: the metrics of no step, the start of each thread's sum.

    Returns:
      The merged parameters and the metrics summed over the layer.
    """
    leaf = get_leaf(params, path)
    n_threads, steps = threads(leaf.shape, granularity)

    positions = jnp.arange(order_N.shape[0])
    idx_NxB, dw_N = jax.vmap(batch)(positions), jax.vmap(dw)(positions)

    def thread(args):
        j_S, dw_S, idx_SxB = args

        def step(s, carry):
            leaf_t, metrics = carry
            new, m = search(set_leaf(params, path, leaf_t), j_S[s], dw_S[s], idx_SxB[s])
            leaf_t = leaf_t.ravel().at[j_S[s]].set(new).reshape(leaf.shape)
            return leaf_t, jax.tree.map(jnp.add, metrics, m)

        leaf_t, metrics = lax.fori_loop(0, steps, step, (leaf, zero_metrics))
        return leaf_t.ravel()[j_S], metrics

    split = (order_N.reshape(n_threads, steps), dw_N.reshape(n_threads, steps), idx_NxB.reshape(n_threads, steps, -1))
    new_TxS, metrics_T = lax.map(thread, split, batch_size=min(vmap_size, n_threads))
    merged = leaf.ravel().at[order_N].set(new_TxS.ravel()).reshape(leaf.shape)
    return set_leaf(params, path, merged), jax.tree.map(lambda a: a.sum(0), metrics_T)
