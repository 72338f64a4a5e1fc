"""Exact incremental candidate losses for RSO on conv nets (Tripathi & Singh, arXiv 2005.05955).

`Incremental` computes the losses of `rsojax.Cached` (the same decisions, up to rounding) for
the parameters of the `ConvBlock` and `ResidualBlock` stages of a `Sequential` model with far
less arithmetic. For a layer of stage d, with x the stage's input after its ReLU
and P = pool(conv(x, K_d)):

- P over the whole training set is cached (channel-major). Weight (kh, kw, ci, co) of K_d
  enters channel co of P only, and linearly (conv and average pool are linear), so setting it
  to v changes P_co by a rank-one term:
      P_co(v) = P_co + (v - w) * pool(S_{kh,kw}(x_ci)),
  S the shift of input channel ci that the 3x3 tap (kh, kw) reads (padding 1).
- BN_d uses the statistics of the batch, per channel: only channel co of Y = BN_d(P) changes,
  its mean and variance recomputed on the batch for each candidate. Searching BN_d's gamma
  or beta of channel co changes the same single channel.
- If stage d+1 is a conv stage, its conv output per candidate is the one for the current
  parameters (computed once for the three) plus a conv of the change in the single input
  channel co:
      conv(relu(Y(v)), K_{d+1}) = conv(relu(Y), K_{d+1}) + conv(relu(Y_co(v)) - relu(Y_co), K_{d+1}[:, :, co]).
  From BN_{d+1} on every channel changes, with statistics of the batch: the model runs in
  full per candidate from there (`Sequential` with `start=d+2`). If stage d+1 is the head,
  the model runs from stage d+1.

Each candidate's loss is computed from its own activations, never as a difference of losses.

Keeping P exact while the kernel changes: the weights of one (input channel, output channel)
pair, its 9 taps, are visited one after another (in either visit order). `ctx.taps` holds the
pair's taps as P last saw them; the batch's P_co is corrected for the pair's changes since
(a 9-tap one-channel conv of the batch), and when the search moves to another pair, the old
pair's changes are folded into P over the whole training set (`refresh`). Every pair is
folded once per layer sweep.

A network's first stage keeps no P where it reads images of one channel (MNIST's): its conv on
the batch, 9 multiply-adds per value (`conv3x3_xla`), costs less than gathering the batch's
rows of P, and P over the training set would cost a prepare and a fold per output channel
besides (MNIST's first P is 3 GB). The stage's layers are evaluated from P's batch rows
computed afresh for each weight, with the same rank-one and one-channel updates from there.
With three channels (CIFAR-10's), the batch's conv costs more than P's rows do
(docs/results.md), and P is kept.

Residual blocks (ReLU -> conv -> [+ skip] -> [pool] -> BN) take the same route. What a block
adds before its BN, the skip tensor (through its shortcut's 1x1 conv and BN, with the batch's
statistics, where it has one), is the same for every candidate: it is added to the batch's
rows of P, and BN_d still changes channel co alone. If block d+1 adds a residual, its skip is
block d's input, which no candidate changes; if it passes its input on as the skip of block
d+2, that input is block d's output with the candidate's channel co, and the full run from
d+2 gets it so.

A weight of a block's shortcut (its 1x1 conv, linear, and its BN, per channel) changes channel
co of what the block adds, and so again channel co of Y alone: the candidates get that channel
from the batch's skip tensor, and P stays as it is. Stages without a 3x3 conv (the dense head,
MLP stages) are evaluated as `Cached` does.

How it is written for speed (measured on a 2-core CPU, `experiments/benchmark.py`): XLA fuses a
cheap producer into each of its consumers, so a value read by several loops is computed once
per loop. A channel picked with a traced index (`kernel[:, :, co]`) or the pair's pending change
to P would be recomputed by up to five loops per weight, and XLA:CPU does not vectorise loops
that contain a dynamic slice; `pick` (a masked sum, exact) and a dot over the 9 pooled shifts of
the input channel produce arrays of their own instead, and `set_channel` replaces a channel with
a select rather than a scatter. On GPUs the shifts are stacked on their leading axis instead
(`shifts_axis`: along the last axis a GPU writes them strided, slowly), and conv d+1's output
is stored once before its BN
(`lax.optimization_barrier`) rather than recomputed in each of BN's passes.
"""

import dataclasses
import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from rsojax.conv_kernel import avg_pool_2x2, conv3x3_single, conv3x3_xla
from rsojax.evaluators.base import OfSequential
from rsojax.evaluators.cached import Cached
from rsojax.evaluators.stage_inputs import (
    CACHE_BATCH,
    STATS_IMAGES,
    StageInputs,
    batch_major,
    default_cache_batch,
    in_passes,
    map_passes,
    run_axes,
    stage_inputs,
)
from rsojax.losses import summed_cross_entropy
from rsojax.models import BatchNorm, ConvBlock, ResidualBlock, Sequential, stage_of
from rsojax.runs import map_runs


def stage_pool(stage: ConvBlock | ResidualBlock, x_BxHxWx: jax.Array) -> jax.Array:
    """The stage's 2x2 average pool (the model's own), if it has one, over axes 1 and 2."""
    return avg_pool_2x2(x_BxHxWx) if stage.pool else x_BxHxWx


def pooled_shifts(stage: ConvBlock | ResidualBlock, x_BxHxW: jax.Array, axis: int) -> jax.Array:
    """The 9 shifts of `x` that the taps (kh, kw) of a 3x3 convolution read (padding 1), each
    pooled as the stage pools, stacked along `axis` in tap order kh * 3 + kw."""
    h, w = x_BxHxW.shape[1:]
    x_pad = jnp.pad(x_BxHxW, ((0, 0), (1, 1), (1, 1)))
    return jnp.stack([stage_pool(stage, x_pad[:, a : a + h, b : b + w]) for a in range(3) for b in range(3)], axis)


def pick(a: jax.Array, i, axis: int) -> jax.Array:
    """`a` at traced index `i` along `axis`, as a sum over the axis of `a` masked to index `i`.

    Exact (one value plus zeros). Unlike a dynamic slice, which XLA fuses into every consumer
    and which keeps XLA:CPU from vectorising those loops (the one-channel convolutions here
    among them), a reduction's result is an array of its own, so the loops that read it index
    it statically. For small arrays (parameters, a few channels).
    """
    axis %= a.ndim
    mask = jnp.arange(a.shape[axis]).reshape([-1 if k == axis else 1 for k in range(a.ndim)]) == i
    return jnp.where(mask, a, 0).sum(axis)


def set_channel(x_BxHxWxC: jax.Array, c, x_c_BxHxW: jax.Array) -> jax.Array:
    """`x` with channel `c` (traced) replaced: a select against the channel index, which
    XLA:CPU vectorises, where a scatter along the last axis is a loop of its own."""
    channel = jnp.arange(x_BxHxWxC.shape[-1]) == c
    return jnp.where(channel, x_c_BxHxW[..., None], x_BxHxWxC)


def batch_norm(bn_params: dict, x_BxHxWxC: jax.Array) -> jax.Array:
    """The model's BatchNorm in search mode (statistics of the batch)."""
    return BatchNorm().apply({"params": bn_params}, x_BxHxWxC, train=True)


@flax.struct.dataclass
class ConvContext:
    """What `Incremental` keeps while a layer of a conv stage d (ConvBlock, ResidualBlock) is searched."""

    inputs: StageInputs  # the stage inputs; inputs.h_S[d] is stage d's input
    kernel: jax.Array  # K_d as prepared
    p_OxNxHxW: jax.Array  # pool(conv(x, K_d)) over the training set, exact but for `pair`
    pair: jax.Array  # int32 (co, ci) whose taps may differ from P's; (-1, -1): none
    taps: jax.Array  # (3, 3) the taps of `pair` that P was computed with
    stage: int = flax.struct.field(pytree_node=False, default=-1)


@dataclasses.dataclass(frozen=True)
class Incremental(OfSequential):
    """A Sequential model with conv stages: exact candidate losses by incremental updates.

    Same interface and decisions as `rsojax.Cached`; see the module docstring for the math.

    Args:
      model: a `rsojax.Sequential`; the parameters of its ConvBlock and ResidualBlock stages are
        evaluated incrementally, the rest as `Cached` does.
      cache_batch: examples per pass over the training set: its caches (the same values at any
        size) and the folds of P. None: `stage_inputs.default_cache_batch()` for the caches (on
        a CPU, passes that stay in the processor's caches), `CACHE_BATCH` for the folds (a fold
        of 9 taps is cheaper in fewer passes).
      stats_images: the caching pass's BN statistics come from this many first training images.
      shifts_axis: where the 9 pooled shifts of the searched input channel are stacked (the
        same values either way): None picks per backend, the last axis on CPUs (XLA:CPU's
        matrix-vector product over contiguous rows), the first elsewhere (a GPU writes the
        last axis strided, slowly).
    """

    model: Sequential
    cache_batch: int | None = None
    stats_images: int = STATS_IMAGES
    shifts_axis: int | None = None
    parallel_safe = False  # its conv cache follows the kernel one weight at a time (`refresh`)

    @property
    def _cached(self) -> Cached:
        return Cached(self.model, self.cache_batch, self.stats_images)

    @property
    def _cache_batch(self) -> int:
        return self.cache_batch or default_cache_batch()

    @property
    def _shifts_axis(self) -> int:
        if self.shifts_axis is not None:
            return self.shifts_axis
        return -1 if jax.default_backend() == "cpu" else 0

    def _stage(self, path: str):
        """(d, the stage if this evaluator's shortcuts apply to the leaf, else None, the leaf)."""
        d = stage_of(path)
        stage, leaf = self.model.stages[d], path.split("/", 1)[1]
        return d, (stage if handles(stage, leaf) else None), leaf

    def _input(self, stage, h: jax.Array) -> jax.Array:
        return nn.relu(h) if _relu_in(stage) else h

    def prepare(self, params, path, data, previous=None):
        """The stage inputs and, for a conv stage's layer, P = pool(conv(x, K_d)) over the
        training set (not for a first stage that reads images of one channel: the module docstring).

        Args:
          params: the parameters the sweep starts from.
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before, if any; its stage inputs, and its P while the kernel is unchanged, are reused.

        Returns:
          A `ConvContext`, or the `StageInputs` for a layer without P.
        """
        return self._prepare(params, path, data, previous, runs=False)[0]

    def prepare_runs(self, params, path, data, previous=None):
        """`prepare` for several runs: each run's stage inputs and P; the training set and the
        pending pair (the same for every run, as all visit the same weight) are shared.

        Args:
          params: the runs' parameters (leading run axis).
          path: the layer.
          data: the training set `(x, y)`.
          previous: the context prepared before for these runs, if any; reused as by `prepare`.

        Returns:
          `(ctx, axes)`.
        """
        return self._prepare(params, path, data, previous, runs=True)

    def _prepare(self, params, path, data, previous, runs: bool):
        d, stage, _ = self._stage(path)
        inputs = stage_inputs(self.model, params, data, d, self.cache_batch, self.stats_images, previous, runs)
        inputs_axes = run_axes(inputs) if runs else None
        if stage is None or not keeps_p(self.model, d):
            return inputs, inputs_axes
        kernel = params[f"stages_{d}"]["Conv_0"]["kernel"]
        if (
            isinstance(previous, ConvContext)
            and previous.stage == d
            and previous.inputs.h_S[d] is inputs.h_S[d]
            and bool(jnp.array_equal(previous.kernel, kernel))
        ):  # BN's gamma after its beta, a shortcut after BN: the conv is unchanged (the same bits)
            p = previous.p_OxNxHxW
        elif runs:
            shared_input = _main(stage, inputs_axes.h_S[d]) is None
            p = _conv_output_runs(stage, _main(stage, inputs.h_S[d]), kernel, self._cache_batch, shared_input)
        else:
            p = _conv_output(stage, _main(stage, inputs.h_S[d]), kernel, self._cache_batch)
        no_pair = jnp.full((2,), -1, jnp.int32)
        taps = jnp.zeros(kernel.shape[:-4] + (3, 3), kernel.dtype)  # with runs, each run's own
        ctx = ConvContext(inputs=inputs, kernel=kernel, p_OxNxHxW=p, pair=no_pair, taps=taps, stage=d)
        # The pair is the same for every run (the runs visit the same weight): shared, the
        # fold's condition stays a branch under the runs' vmap.
        axes = ConvContext(inputs=inputs_axes, kernel=0, p_OxNxHxW=0, pair=None, taps=0, stage=d) if runs else None
        return ctx, axes

    def refreshed(self, ctx):
        """What `refresh` updates: P and its pending pair (a sweep updates them in place).

        Args:
          ctx: a context `prepare` gave.

        Returns:
          A pytree prefix of `ctx`: True where `refresh` changes it.
        """
        if not isinstance(ctx, ConvContext):
            return False
        return ConvContext(inputs=False, kernel=False, p_OxNxHxW=True, pair=True, taps=True, stage=ctx.stage)

    def refresh(self, ctx, params, path, j):
        """Folds the previous (input, output) channel pair's changes into P when weight `j` is of another pair.

        Args:
          ctx: the context so far.
          params: the current parameters.
          path: the layer.
          j: the weight's row-major flat index in the layer (traced).

        Returns:
          The context for weight `j`.
        """
        d, stage, leaf = self._stage(path)
        if stage is None or leaf != "Conv_0/kernel" or not isinstance(ctx, ConvContext):
            return ctx
        kernel = params[f"stages_{d}"]["Conv_0"]["kernel"]
        _, _, ci, co = jnp.unravel_index(j, kernel.shape)
        pair = jnp.stack([co, ci]).astype(jnp.int32)

        def fold(p_OxNxHxW):
            """Brings P's channel of the old pair up to the kernel: one input channel's 9-tap
            conv over the training set, added in place pass by pass (XLA:CPU allocates the
            temporaries of a conditional branch, and the kernel faults their pages in, at every
            call: one pass over all examples had 216 MB of them)."""
            old_co, old_ci = ctx.pair
            dtaps = _taps(kernel, old_ci, old_co) - ctx.taps

            h = _main(stage, ctx.inputs.h_S[d])

            def change(start, size):
                x = lax.dynamic_slice(h, _index(old_ci, start, 0, 0), (1, size, *h.shape[2:]))[0]
                return conv3x3_single(self._input(stage, x), dtaps, stage.pool)[None]

            def add(p, dp, start):
                at = _index(old_co, start, 0, 0)
                return lax.dynamic_update_slice(p, lax.dynamic_slice(p, at, dp.shape) + dp, at)

            # Pooled: 16 multiply-adds per value, from every other column, worth both cores;
            # unpooled: 9 per value, on contiguous rows, bound by memory.
            size = self.cache_batch or CACHE_BATCH
            return in_passes(change, add, p_OxNxHxW, p_OxNxHxW.shape[1], size, ahead=stage.pool)

        moved = jnp.any(pair != ctx.pair)
        # Only P goes through the cond: the multi-GB stage inputs stay loop-invariant for XLA.
        p = lax.cond(moved & (ctx.pair[0] >= 0), fold, lambda p: p, ctx.p_OxNxHxW)
        return ctx.replace(p_OxNxHxW=p, pair=pair, taps=jnp.where(moved, _taps(kernel, ci, co), ctx.taps))

    def losses(self, ctx, params, path, j, values_3, idx_B):
        """The candidates' losses by the rank-one and one-channel updates of the module docstring.

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
        d, stage, leaf = self._stage(path)
        if stage is None:
            return self._cached.losses(ctx, params, path, j, values_3, idx_B)
        sp = params[f"stages_{d}"]
        has_p = isinstance(ctx, ConvContext)
        inputs = ctx.inputs if has_p else ctx
        h_d = inputs.h_S[d]
        co = _co_of(leaf, j, sp)  # the output channel the weight enters
        # What BN_d normalises: P plus, in a residual block, its (pooled) skip tensor, which no
        # candidate of the 3x3 conv or of BN_d changes. Without P (a first stage of one input
        # channel), P's batch rows for the current kernel, and channel co of them.
        if has_p:
            pre_B = batch_major(ctx.p_OxNxHxW, idx_B)  # (B, H', W', O)
            p_co = channel_rows(ctx.p_OxNxHxW, co, idx_B)
        else:
            input_B = self._input(stage, batch_major(_main(stage, h_d), idx_B))  # (B, H, W, 1)
            pre_B = conv3x3_xla(input_B, sp["Conv_0"]["kernel"], stage.pool)
            # Channel co by its own correlation: cheaper than picking it from pre_B, whose
            # multiply-adds XLA would fuse into every loop that reads it (docs/results.md).
            p_co = conv3x3_single(input_B[..., 0], _taps(sp["Conv_0"]["kernel"], 0, co), stage.pool)
        added_co = 0.0
        if _is_residual(stage):
            skip_B = batch_major(h_d[1], idx_B)
            added_B = _added(stage, sp, skip_B)
            pre_B, added_co = pre_B + added_B, pick(added_B, co, 3)

        def bn_channel(bn_params, x_channel, **replace):
            """Channel co of a BN (batch statistics), with parameters replaced by `replace`."""
            bn_co = {name: pick(value, co, 0)[None] for name, value in bn_params.items()}
            return batch_norm(bn_co | {k: v[None] for k, v in replace.items()}, x_channel[..., None])[..., 0]

        bn = sp["BatchNorm_0"]
        if leaf == "Conv_0/kernel":
            kernel = sp["Conv_0"]["kernel"]
            kh, kw, ci, _ = jnp.unravel_index(j, kernel.shape)
            x_B = self._input(stage, channel_rows(_main(stage, h_d), ci, idx_B))  # (B, H, W)
            axis = self._shifts_axis
            s9 = pooled_shifts(stage, x_B, axis)
            pre_co = p_co
            if has_p:  # channel co of P for the current kernel: P's value plus the pair's pending change
                pre_co = pre_co + jnp.tensordot(s9, (_taps(kernel, ci, co) - ctx.taps).reshape(9), ([axis], [0]))
            pre_co = pre_co + added_co
            s_B = pick(s9, kh * 3 + kw, axis)
            dv_3 = values_3 - kernel[kh, kw, ci, co]
            yc_3 = jax.vmap(lambda dv: bn_channel(bn, pre_co + dv * s_B))(dv_3)
            pre_B = set_channel(pre_B, co, pre_co)
        elif leaf.startswith("shortcut"):  # channel co of what the block adds changes
            shortcut_bn = sp["shortcut_bn"]
            conv_co = pick(_shortcut_conv(sp, skip_B), co, 3)  # (B, H, W)
            if leaf == "shortcut_conv/kernel":
                ci = jnp.unravel_index(j, sp["shortcut_conv"]["kernel"].shape)[2]
                s_B = pick(skip_B, ci, 3)
                dv_3 = values_3 - sp["shortcut_conv"]["kernel"].ravel()[j]
                added_3 = jax.vmap(lambda dv: bn_channel(shortcut_bn, conv_co + dv * s_B))(dv_3)
            else:
                name = leaf.split("/")[-1]
                added_3 = jax.vmap(lambda v: bn_channel(shortcut_bn, conv_co, **{name: v}))(values_3)
            yc_3 = jax.vmap(lambda added: bn_channel(bn, p_co + stage_pool(stage, added)))(added_3)
        else:  # BN beta or gamma of channel co = j
            name = leaf.split("/")[-1]
            pre_co = p_co + added_co
            yc_3 = jax.vmap(lambda v: bn_channel(bn, pre_co, **{name: v}))(values_3)
        y_B = batch_norm(bn, pre_B)
        # Stage d's output: Y, with its input passed on where the next block adds it as a skip.
        out_B = (y_B, batch_major(_main(stage, h_d), idx_B)) if getattr(stage, "keep", False) else y_B
        return self._suffix_losses(params, d, out_B, co, yc_3, inputs.y_N[idx_B])

    def _suffix_losses(self, params, d, out_B, co, yc_3, labels_B):
        """Losses when channel co of Y, in stage d's output `out_B` (Y, or (Y, skip)), is set
        to each of `yc_3`."""
        nxt = d + 1
        stages = self.model.stages
        y_B = out_B[0] if isinstance(out_B, tuple) else out_B
        stage_n = stages[nxt] if nxt < len(stages) else None
        if handles(stage_n, "Conv_0/kernel"):  # its input is stage d's output, its main tensor Y
            sp_n = params[f"stages_{nxt}"]
            k_n = sp_n["Conv_0"]["kernel"]
            base = conv3x3_xla(self._input(stage_n, y_B), k_n, stage_n.pool)
            added = _added(stage_n, sp_n, out_B[1] if _is_residual(stage_n) else None)
            base = base if added is None else base + added
            base_co = self._input(stage_n, y_B[..., co])
            k_co = pick(k_n, co, 2)  # (3, 3, O): the taps that read input channel co

            def loss(yc):
                delta = conv3x3_single(self._input(stage_n, yc) - base_co, k_co, stage_n.pool)
                # Stored once: each of BN's passes (mean, variance, normalisation) would otherwise
                # recompute the one-channel convolution of every output channel.
                z = batch_norm(sp_n["BatchNorm_0"], lax.optimization_barrier(base + delta))
                z = (z, set_channel(y_B, co, yc)) if getattr(stage_n, "keep", False) else z
                out = self.model.apply({"params": params}, z, train=True, start=nxt + 1)
                return summed_cross_entropy(out, labels_B)

        else:

            def loss(yc):
                y_c = set_channel(y_B, co, yc)
                out_c = (y_c, *out_B[1:]) if isinstance(out_B, tuple) else y_c
                out = self.model.apply({"params": params}, out_c, train=True, start=nxt)
                return summed_cross_entropy(out, labels_B)

        return jax.vmap(loss)(yc_3)


def handles(stage, leaf: str) -> bool:
    """Whether `Incremental`'s shortcuts apply to `leaf` of `stage`: every searched parameter of
    a ConvBlock or a ResidualBlock (the conv's kernel, BN's, the shortcut's)."""
    return isinstance(stage, ConvBlock | ResidualBlock) and leaf in stage.searched


def keeps_p(model: Sequential, d: int) -> bool:
    """Whether `Incremental` keeps P over the training set for conv stage d: unless d is the
    first stage and the network's input has one channel (the module docstring)."""
    return d > 0 or model.input_shape[-1] > 1


def _co_of(leaf: str, j, sp: dict):
    """The output channel that weight `j` of `leaf` (a handled leaf) enters."""
    module, name = leaf.split("/")
    return jnp.unravel_index(j, sp[module]["kernel"].shape)[3] if name == "kernel" else j


def _is_residual(stage) -> bool:
    return isinstance(stage, ResidualBlock) and stage.residual


def _relu_in(stage) -> bool:
    return stage.relu_in if isinstance(stage, ConvBlock) else True


def _main(stage, h):
    """A stage input's main tensor: h of a residual block's (h, skip)."""
    return h[0] if _is_residual(stage) else h


def _added(stage, sp: dict, skip_B):
    """What a residual block adds to its conv output, pooled as the block pools: the skip
    tensor, through the shortcut's 1x1 conv and BN (statistics of the batch) where it has one;
    None for a stage that adds nothing."""
    if skip_B is None:
        return None
    if stage.shortcut:
        skip_B = batch_norm(sp["shortcut_bn"], _shortcut_conv(sp, skip_B))
    return stage_pool(stage, skip_B)


def _shortcut_conv(sp: dict, skip_B: jax.Array) -> jax.Array:
    """A residual block's 1x1 shortcut conv of the skip tensor."""
    kernel = sp["shortcut_conv"]["kernel"]
    return nn.Conv(kernel.shape[-1], (1, 1), use_bias=False).apply({"params": {"kernel": kernel}}, skip_B)


def _index(*i) -> tuple:
    """Start indices of one integer type (dynamic_slice refuses a mix, as under x64)."""
    return tuple(jnp.asarray(v, jnp.int32) for v in i)


def _taps(kernel_3x3xIxO: jax.Array, ci, co) -> jax.Array:
    """The 9 taps (3, 3) of input channel `ci` into output channel `co` (traced), via `pick`."""
    return pick(pick(kernel_3x3xIxO, co, 3), ci, 2)


def channel_rows(h_CxNx: jax.Array, c, idx_B: jax.Array) -> jax.Array:
    """h_CxNx[c, idx_B] as one gather of rows (indexing both axes can copy channel c first)."""
    return h_CxNx.reshape(-1, *h_CxNx.shape[2:])[c * h_CxNx.shape[1] + idx_B]


@functools.partial(jax.jit, static_argnames=("stage", "cache_batch", "shared_input"))
def _conv_output_runs(stage, h_IxNxHxW: jax.Array, kernel_R: jax.Array, cache_batch: int, shared_input: bool) -> jax.Array:
    """`_conv_output` of several runs' kernels (leading run axis), of their own inputs or,
    with `shared_input`, of the training set they share."""
    if shared_input:
        return map_runs(lambda k: _conv_output(stage, h_IxNxHxW, k, cache_batch), (kernel_R,))
    return map_runs(lambda h, k: _conv_output(stage, h, k, cache_batch), (h_IxNxHxW, kernel_R))


@functools.partial(jax.jit, static_argnames=("stage", "cache_batch"))
def _conv_output(
    stage: ConvBlock | ResidualBlock, h_IxNxHxW: jax.Array, kernel: jax.Array, cache_batch: int
) -> jax.Array:
    """pool(conv(x, kernel)) over the training set, channel-major (O, N, H', W')."""
    relu = nn.relu if _relu_in(stage) else (lambda a: a)

    def conv(h_pass):  # (I, pass, H, W)
        return conv3x3_xla(relu(jnp.moveaxis(h_pass, 0, -1)), kernel, stage.pool)

    return map_passes(conv, h_IxNxHxW, cache_batch, axis=1)
