"""How several runs are batched where each has its own weights: together, or one at a time.

Mapped with `jax.vmap`, a network whose kernels differ per run becomes grouped convolutions
(one group per run). GPUs and TPUs run those well, so there the runs stay batched. XLA's CPU
grouped convolution is far slower than the ordinary one it is built from (about 10x per run
for the paper's 16-channel network), so on CPUs each run is computed in turn (`lax.map`),
as fast as a single run: K runs cost what K separate runs cost, compiled once.
"""

import jax
from jax import lax


def one_at_a_time_on_cpu():
    """Whether runs are computed in turn (CPUs) rather than batched (elsewhere)."""
    return jax.default_backend() == "cpu"


def map_runs(fn, batched: tuple, shared: tuple = ()):
    """`fn(*batched_k, *shared)` for every run k, stacked: `batched` with a leading run axis.

    Args:
      fn: a function of one run.
      batched: arguments with a leading run axis (pytrees).
      shared: arguments every run takes as they are.

    Returns:
      `fn`'s results with a leading run axis.
    """
    if one_at_a_time_on_cpu():
        return lax.map(lambda b: fn(*b, *shared), batched)
    return jax.vmap(lambda *b: fn(*b, *shared))(*batched)


def per_run(fn):
    """`fn` of one run, for `jax.vmap` to map over the runs: on CPUs one run at a time
    (`lax.map`: the arguments that carry the mapped axis are mapped, the others passed to each
    call as they are, not copied); elsewhere `fn` itself, batched. For functions that are never
    differentiated (custom batching has no autodiff rule).
    """
    if not one_at_a_time_on_cpu():
        return fn

    @jax.custom_batching.custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def rule(axis_size, in_batched, *args):
        del axis_size
        leaves, tree = jax.tree.flatten(args)
        flags = jax.tree.leaves(in_batched)

        def one(batched_leaves):
            it = iter(batched_leaves)
            return fn(*jax.tree.unflatten(tree, [next(it) if b else a for a, b in zip(leaves, flags)]))

        out = lax.map(one, [a for a, b in zip(leaves, flags) if b])
        return out, jax.tree.map(lambda _: True, out)

    return wrapped
