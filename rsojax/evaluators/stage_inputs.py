"""The reference code's caching pass: every stage's input over the whole training set.

Before a layer is searched, the reference computes the activations entering it for the whole
training set (in passes of 2000 images; here of `default_cache_batch()`, the same values) and
starts every candidate evaluation there. That pass runs outside autograd, so its BN layers are
in inference mode, with the statistics just reset from the first 2000 training images (the
statistics test evaluation uses), not each pass's own. `h_S[d]` depends only on the
parameters of the stages before d (their statistics too), so one pass serves every layer of a
cycle: RSO visits the last stage first.

The inputs are stored channel-major, (C, N, ...): one channel of every example is contiguous,
which is what `Incremental` reads. A stage input that is a pytree (the residual network's
`(h, skip)`) is stored leaf by leaf, each distinct array once: a skip tensor is also the input
of the stage before. Each pass is written in place, so the pass needs memory for what it
stores and one pass more (CIFAR-10's 50,000 images: 11.7 GB), not a stacked and a transposed
copy of the passes.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from rsojax.evaluation import bn_statistics
from rsojax.models import Sequential
from rsojax.runs import map_runs

STATS_IMAGES = 2000  # the reference code's BN statistics: the first 2000 training images
# Examples per pass over the training set. Memory is one pass's activations; the values do not
# depend on it. On a CPU, a pass whose activations stay in the processor's caches between one
# XLA kernel and the next is also faster than one that goes through main memory (measured in
# docs/results.md); on an accelerator, each pass costs a few kernel launches, so passes are big.
CACHE_BATCH = 2000
CPU_CACHE_BATCH = 128


def default_cache_batch() -> int:
    """Examples per caching pass on the default backend: `CPU_CACHE_BATCH` on CPUs,
    `CACHE_BATCH` elsewhere."""
    return CPU_CACHE_BATCH if jax.default_backend() == "cpu" else CACHE_BATCH


def in_passes(compute, write, carry, n: int, size: int, ahead: bool = False):
    """`carry = write(carry, compute(start, length), start)` over examples 0..n-1 in passes of
    `size` (a loop, so the temporaries are those of one pass); `compute` must not read `carry`.

    With `ahead`, each pass is computed one iteration before it is written. A value computed in
    the iteration that writes it is fused into the in-place update (`dynamic_update_slice`), a
    loop XLA:CPU runs on one core; carried to the next iteration, it is an array of its own,
    which XLA:CPU computes split over the cores. That pays where a value costs more to compute
    than to store once more (many multiply-adds per value), not for a copy or a few
    multiply-adds per value read from memory.
    """
    size = min(size, n)
    full = n // size
    if ahead:

        def step(i, c):
            carry, done = c
            return write(carry, done, (i - 1) * size), compute(i * size, size)

        carry, done = lax.fori_loop(1, full, step, (carry, compute(0, size)))
        carry = write(carry, done, (full - 1) * size)
    else:
        carry = lax.fori_loop(0, full, lambda i, c: write(c, compute(i * size, size), i * size), carry)
    rest = n - full * size
    return write(carry, compute(full * size, rest), full * size) if rest else carry


def map_passes(fn, x: jax.Array, size: int, axis: int = 0):
    """`fn` over the examples of `x` (on `axis`) in passes of `size` (`in_passes`), its outputs
    stored channel-major: memory is the outputs and one pass, never a second copy of either.

    `fn` maps a pass to a pytree of arrays with the examples first and the channels last,
    (pass, ..., C); each is written in place into its (C, N, ...) array, which is returned.
    """
    n = x.shape[axis]

    def channels_first(x_pass):
        return jax.tree.map(lambda a: jnp.moveaxis(a, -1, 0), fn(x_pass))

    def compute(start, length):
        return channels_first(lax.dynamic_slice_in_dim(x, start, length, axis))

    def write(out, done, start):
        return jax.tree.map(lambda o, a: lax.dynamic_update_slice_in_dim(o, a, start, 1), out, done)

    one_pass = jax.ShapeDtypeStruct(x.shape[:axis] + (min(size, n),) + x.shape[axis + 1 :], x.dtype)
    out = jax.tree.map(lambda s: jnp.zeros((s.shape[0], n, *s.shape[2:]), s.dtype), jax.eval_shape(channels_first, one_pass))
    return in_passes(compute, write, out, n, size)


def batch_major(h_CxN, idx_B: jax.Array):
    """Examples `idx_B` of a channel-major array (or pytree of them), back in the model's
    layout (B, ..., C)."""
    return jax.tree.map(lambda a: jnp.moveaxis(a[:, idx_B], 0, -1), h_CxN)


@functools.partial(jax.jit, static_argnames=("model", "stats_images"))
def reference_statistics(model: Sequential, params, x_N: jax.Array, stats_images: int = STATS_IMAGES) -> dict:
    """The `batch_stats` of every BN layer over the first `stats_images` training images."""
    return bn_statistics(model, params, x_N[:stats_images])


@functools.partial(jax.jit, static_argnames=("model", "stats_images"))
def reference_statistics_runs(model: Sequential, params, x_N: jax.Array, stats_images: int = STATS_IMAGES) -> dict:
    """`reference_statistics` of several runs: `params` and the result with a leading run axis."""
    return map_runs(lambda p: bn_statistics(model, p, x_N[:stats_images]), (params,))


def prefix(model: Sequential, params, stats: dict, x_B: jax.Array, stop: int):
    """Stages 0..`stop - 1` in inference mode with `stats`: the caching pass for a batch."""
    return model.apply({"params": params, "batch_stats": stats}, x_B, train=False, stop=stop)


@flax.struct.dataclass
class StageInputs:
    """The input of stages 0..len(h_S)-1 for every training example, channel-major."""

    params: dict  # the parameters the inputs were computed with
    h_S: tuple  # h_S[d]: (C, N, ...) input of stage d (a pytree of such arrays where it is one)
    y_N: jax.Array


def _prefix_inputs(model: Sequential, params, stats: dict, x_pass: jax.Array, stages: int) -> list:
    """The inputs of stages 0..`stages - 1` for a pass of examples: the stages in inference
    mode with `stats`."""
    h = [x_pass]
    for d in range(stages - 1):
        h.append(model.apply({"params": params, "batch_stats": stats}, h[-1], train=False, start=d, stop=d + 1))
    return h


def _distinct(trees: list) -> tuple[list, list]:
    """The distinct arrays among the leaves of `trees`, and for each tree its treedef and the
    positions of its leaves among them. A stage that passes an array on (a residual block its
    input, as the next block's skip) hands on the very value, which is thus stored once."""
    arrays, position, layout = [], {}, []
    for tree in trees:
        leaves, treedef = jax.tree.flatten(tree)
        for a in leaves:
            if id(a) not in position:
                position[id(a)] = len(arrays)
                arrays.append(a)
        layout.append((treedef, tuple(position[id(a)] for a in leaves)))
    return arrays, layout


def _distinct_arrays(model: Sequential, params, x, stages: int, cache_batch: int, stats_images: int, first: int) -> list:
    """The distinct stage inputs from the `first`-th on (the 0th is the training set's `x`)."""
    stats = reference_statistics(model, params, x, stats_images)
    return map_passes(lambda x_pass: _distinct(_prefix_inputs(model, params, stats, x_pass, stages))[0][first:], x, cache_batch)


@functools.partial(jax.jit, static_argnames=("model", "stages", "cache_batch", "stats_images", "runs"))
def _distinct_stage_inputs(
    model: Sequential, params, x, stages: int, cache_batch: int, stats_images: int, runs: bool = False
) -> list:
    if not runs:
        return _distinct_arrays(model, params, x, stages, cache_batch, stats_images, 0)
    # The training set (array 0) is every run's: stored once, the rest once per run.
    x_CxN = map_passes(lambda x_pass: x_pass, x, cache_batch)
    per_run = map_runs(lambda p: _distinct_arrays(model, p, x, stages, cache_batch, stats_images, 1), (params,))
    return [x_CxN, *per_run]


def _stage_inputs(model: Sequential, params, x, stages: int, cache_batch: int, stats_images: int, runs: bool) -> tuple:
    """The inputs of stages 0..`stages - 1`, channel-major, each distinct array once; with
    `runs`, every array but the training set's with a leading run axis."""
    arrays = _distinct_stage_inputs(model, params, x, stages, cache_batch, stats_images, runs)
    layout = []

    def trace(params, x_pass):  # the layout, from an abstract pass: nothing is computed
        stats = bn_statistics(model, params, x_pass)
        layout.extend(_distinct(_prefix_inputs(model, params, stats, x_pass, stages))[1])

    one_run = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:] if runs else a.shape, a.dtype), params)
    jax.eval_shape(trace, one_run, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    return tuple(jax.tree.unflatten(treedef, [arrays[i] for i in at]) for treedef, at in layout)


def stage_inputs(
    model: Sequential,
    params,
    data,
    stage: int,
    cache_batch: int | None = None,
    stats_images: int = STATS_IMAGES,
    previous=None,
    runs: bool = False,
) -> StageInputs:
    """The inputs of stages 0..`stage`, reusing those of `previous` (a `StageInputs`, or a
    context with one as `.inputs`) if the stages before are unchanged. With `runs`, `params`
    holds several runs' on a leading axis, and so does every input but the training set
    (`run_axes`). `cache_batch`: examples per pass (None: `default_cache_batch()`)."""
    previous = getattr(previous, "inputs", previous)
    if (
        isinstance(previous, StageInputs)
        and len(previous.h_S) > stage
        and all(
            bool(jnp.array_equal(a, b))
            for d in range(stage)
            for a, b in zip(jax.tree.leaves(params[f"stages_{d}"]), jax.tree.leaves(previous.params[f"stages_{d}"]))
        )
    ):
        # Only the inputs of stages up to `stage` stay valid once it changes: drop the rest.
        return previous.replace(h_S=previous.h_S[: stage + 1])
    x, y = data
    h_S = _stage_inputs(model, params, x, stage + 1, cache_batch or default_cache_batch(), stats_images, runs)
    return StageInputs(params=params, h_S=h_S, y_N=y)


def run_axes(inputs: StageInputs) -> StageInputs:
    """Where `stage_inputs(..., runs=True)` has a leading run axis: 0 on what the runs'
    parameters made, None on what they share (the training set)."""
    x_CxN = inputs.h_S[0]
    h_S = jax.tree.map(lambda a: None if a is x_CxN else 0, inputs.h_S)
    return StageInputs(params=0, h_S=h_S, y_N=None)
