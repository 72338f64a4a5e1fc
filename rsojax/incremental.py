"""Exact incremental candidate losses for RSO on conv nets (Tripathi & Singh, arXiv 2005.05955).

`Incremental` gives the same losses as `rsojax.Cached` (same decisions, up to rounding) for
the stages of a `Sequential` model that are `ConvBlock`s, with less arithmetic per weight:

- Searching weight (kh, kw, ci, co) of the kernel K_d of stage d, with input x (after the
  stage's ReLU), conv output P = pool(conv(x, K_d)). Setting the weight to v changes only
  channel co of P, by a rank-one term (conv and average pool are linear):
      P_co(v) = P_co + (v - w) * pool(S_{kh,kw}(x_ci)),
  S the shift of input channel ci that the 3x3 tap (kh, kw) reads (padding 1). P over the
  whole training set is cached in `prepare`.
- BN_d uses the statistics of the batch, per channel: only channel co of Y = BN_d(P) changes;
  its mean and variance are recomputed exactly on the batch for each candidate. Searching
  BN_d's gamma or beta of channel co changes the same single channel.
- Stage d+1 (if a ConvBlock) sees a change in one input channel. Its conv output per candidate
  is the base (current parameters, shared by the three candidates: w', w' + dw and w' - dw are
  all changes of the current weight w) plus a one-input-channel conv of the difference:
      conv(relu(Y(v)), K_{d+1}) = conv(relu(Y), K_{d+1}) + conv(relu(Y_co(v)) - relu(Y_co), K_{d+1}[:, :, co]).
- From BN_{d+1} on everything changes, and the batch statistics make it depend on the batch:
  the rest of the model runs in full per candidate (`Sequential` with `start=d+2`). If stage
  d+1 is not a ConvBlock (the head), the model runs from stage d+1 per candidate.

Each candidate's loss is computed from its own activations (no difference of losses), so in
float32 only rounding of the activations differs from `Cached`.

Keeping the cache consistent: `ctx.kernel` is the kernel the cached P was computed with. The
current kernel may differ from it in any output channels; `losses` corrects the batch's P for
them (one-output-channel conv when one channel differs, the usual case as RSO visits a kernel
output channel by output channel; a full conv otherwise), and `update` folds a differing
channel into the whole-set cache when the search has moved to another channel (once per output
channel). The engine does not carry `ctx` from one `RSO.sweep` call to the next, so each call
starts from the prepared cache and catches up once (a full conv over the training set): sweep
a layer in few chunks.

Stages that are not ConvBlocks (the dense head, MLP stages) are evaluated as `Cached` does.
"""

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from rsojax.evaluators import Cached, stage_inputs
from rsojax.losses import summed_cross_entropy
from rsojax.models import BatchNorm, ConvBlock, Sequential, stage_of


def conv3x3(x_BxHxWxI: jax.Array, kernel_3x3xIxO: jax.Array) -> jax.Array:
    """ConvBlock's convolution (3x3, padding 1, no bias) with a given kernel."""
    conv = nn.Conv(kernel_3x3xIxO.shape[-1], (3, 3), padding=1, use_bias=False)
    return conv.apply({"params": {"kernel": kernel_3x3xIxO}}, x_BxHxWxI)


def stage_pool(stage: ConvBlock, x_BxHxWxC: jax.Array) -> jax.Array:
    """The stage's 2x2 average pool, if it has one."""
    return nn.avg_pool(x_BxHxWxC, (2, 2), strides=(2, 2)) if stage.pool else x_BxHxWxC


def batch_norm(bn_params: dict, x_BxHxWxC: jax.Array) -> jax.Array:
    """The model's BatchNorm in search mode (statistics of the batch)."""
    return BatchNorm().apply({"params": bn_params}, x_BxHxWxC, train=True)


def map_chunks(fn, x: jax.Array, chunk_size: int) -> jax.Array:
    """`fn` over `x` in chunks of `chunk_size` examples (bounded memory), concatenated."""
    n = x.shape[0]
    n_full = n // chunk_size
    if n_full == 0:
        return fn(x)
    out = lax.map(fn, x[: n_full * chunk_size].reshape(n_full, chunk_size, *x.shape[1:]))
    out = out.reshape(n_full * chunk_size, *out.shape[2:])
    if n_full * chunk_size < n:
        out = jnp.concatenate([out, fn(x[n_full * chunk_size :])])
    return out


@flax.struct.dataclass
class ConvContext:
    """What `Incremental` keeps for a layer of a ConvBlock stage d.

    `x_in` and `kernel` are None when a BN parameter is searched (the conv does not change).
    """

    p_OxNxHxW: jax.Array  # pool(conv(x_in, kernel)) over the training set, channel-major
    y_N: jax.Array  # labels
    x_in: jax.Array | None = None  # (N, H, W, I) the conv's input: stage input after the ReLU
    kernel: jax.Array | None = None  # (3, 3, I, O) the kernel `p_OxNxHxW` was computed with


@dataclasses.dataclass(frozen=True)
class Incremental:
    """A Sequential model with ConvBlock stages: exact candidate losses by incremental updates.

    Same interface and decisions as `rsojax.Cached`; see the module docstring for the math.

    Args:
      model: a `rsojax.Sequential`; its ConvBlock stages are evaluated incrementally, other
        stages as `Cached` does.
      chunk_size: examples per chunk when computing whole-training-set caches (BN of the
        stages before the searched one uses each chunk's statistics, as in `Cached`).
    """

    model: Sequential
    chunk_size: int = 2000

    def __post_init__(self):
        if not isinstance(self.model, Sequential):
            raise ValueError(f"model: Incremental needs a rsojax.Sequential model, got {type(self.model).__name__}")

    @property
    def example_shape(self):
        return tuple(self.model.input_shape)

    @property
    def _cached(self) -> Cached:
        return Cached(self.model, self.chunk_size)

    def _stage(self, path: str):
        d = stage_of(path)
        stage = self.model.stages[d]
        return d, (stage if isinstance(stage, ConvBlock) else None), path.split("/", 1)[1]

    def _conv_output(self, stage: ConvBlock, x_in: jax.Array, kernel: jax.Array) -> jax.Array:
        """pool(conv(x_in, kernel)) over the whole set, channel-major (O, N, H', W')."""
        out = map_chunks(lambda x: stage_pool(stage, conv3x3(x, kernel)), x_in, self.chunk_size)
        return jnp.moveaxis(out, -1, 0)

    def prepare(self, params, path, data):
        d, stage, leaf = self._stage(path)
        if stage is None:
            return self._cached.prepare(params, path, data)
        x, y = data
        h = stage_inputs(self.model, params, x, d, self.chunk_size)
        x_in = nn.relu(h) if stage.relu_in else h
        kernel = params[f"stages_{d}"]["Conv_0"]["kernel"]
        p = self._conv_output(stage, x_in, kernel)
        if leaf != "Conv_0/kernel":
            return ConvContext(p_OxNxHxW=p, y_N=y)
        return ConvContext(p_OxNxHxW=p, y_N=y, x_in=x_in, kernel=kernel)

    def losses(self, ctx, params, path, j, values_3, idx_B):
        d, stage, leaf = self._stage(path)
        if stage is None:
            return self._cached.losses(ctx, params, path, j, values_3, idx_B)
        sp = params[f"stages_{d}"]
        bn = sp["BatchNorm_0"]
        p_B = jnp.moveaxis(ctx.p_OxNxHxW[:, idx_B], 0, -1)  # (B, H', W', O)

        def bn_channel(co, p_channel, **replace):
            bn_co = {name: value[co][None] for name, value in bn.items()} | {k: v[None] for k, v in replace.items()}
            return batch_norm(bn_co, p_channel[..., None])[..., 0]

        if leaf == "Conv_0/kernel":
            kernel = sp["Conv_0"]["kernel"]
            x_B = ctx.x_in[idx_B]
            p_B = p_B + self._batch_correction(stage, x_B, kernel, ctx.kernel)
            kh, kw, ci, co = jnp.unravel_index(j, kernel.shape)
            x_pad = jnp.pad(x_B[..., ci], ((0, 0), (1, 1), (1, 1)))
            shifted = lax.dynamic_slice(x_pad, (jnp.zeros_like(kh), kh, kw), x_B.shape[:3])
            s_B = stage_pool(stage, shifted[..., None])[..., 0]
            dv_3 = values_3 - kernel.ravel()[j]
            yc_3 = jax.vmap(lambda dv: bn_channel(co, p_B[..., co] + dv * s_B))(dv_3)
        else:  # BN beta or gamma of channel co = j
            co, name = j, leaf.split("/")[-1]
            yc_3 = jax.vmap(lambda v: bn_channel(co, p_B[..., co], **{name: v}))(values_3)
        y_B = batch_norm(bn, p_B)
        return self._suffix_losses(params, d, y_B, co, yc_3, ctx.y_N[idx_B])

    def _batch_correction(self, stage, x_B, kernel, cached_kernel):
        """pool(conv(x_B, kernel - cached_kernel)): one output channel if only one differs."""
        dk = kernel - cached_kernel
        stale_O = jnp.any(dk != 0, axis=(0, 1, 2))
        one = jnp.argmax(stale_O)

        def single():
            dp = stage_pool(stage, conv3x3(x_B, dk[..., one][..., None]))
            return jnp.zeros(dp.shape[:-1] + dk.shape[-1:], dp.dtype).at[..., one].set(dp[..., 0])

        return lax.cond(stale_O.sum() <= 1, single, lambda: stage_pool(stage, conv3x3(x_B, dk)))

    def _suffix_losses(self, params, d, y_B, co, yc_3, labels_B):
        """Losses when channel co of stage d's output Y is set to each of `yc_3`."""
        nxt = d + 1
        stages = self.model.stages
        if nxt < len(stages) and isinstance(stages[nxt], ConvBlock):
            stage_n, sp_n = stages[nxt], params[f"stages_{nxt}"]
            act = nn.relu if stage_n.relu_in else (lambda a: a)
            k_n = sp_n["Conv_0"]["kernel"]
            k_co = lax.dynamic_slice_in_dim(k_n, co, 1, axis=2)
            base = stage_pool(stage_n, conv3x3(act(y_B), k_n))
            base_co = act(y_B[..., co])

            def loss(yc):
                delta = stage_pool(stage_n, conv3x3((act(yc) - base_co)[..., None], k_co))
                z = batch_norm(sp_n["BatchNorm_0"], base + delta)
                out = self.model.apply({"params": params}, z, train=True, start=nxt + 1)
                return summed_cross_entropy(out, labels_B)

        else:

            def loss(yc):
                out = self.model.apply({"params": params}, y_B.at[..., co].set(yc), train=True, start=nxt)
                return summed_cross_entropy(out, labels_B)

        return jax.vmap(loss)(yc_3)

    def update(self, ctx, params, path, j, old, new):
        del old, new
        _, stage, leaf = self._stage(path)
        if stage is None or leaf != "Conv_0/kernel":
            return ctx
        kernel = params[path.split("/", 1)[0]]["Conv_0"]["kernel"]
        co = j % kernel.shape[-1]
        stale_O = jnp.any(kernel != ctx.kernel, axis=(0, 1, 2)) & (jnp.arange(kernel.shape[-1]) != co)
        return lax.switch(
            jnp.minimum(stale_O.sum(), 2),
            [
                lambda c: c,
                lambda c: self._fold_channel(stage, c, kernel, jnp.argmax(stale_O)),
                lambda c: self._fold(stage, c, kernel, keep=co),
            ],
            ctx,
        )

    def _fold_channel(self, stage, ctx, kernel, c):
        """Brings cached channel c up to the current kernel (a one-output-channel conv)."""
        dk = (kernel[..., c] - ctx.kernel[..., c])[..., None]
        dp = self._conv_output(stage, ctx.x_in, dk)[0]
        return ctx.replace(
            p_OxNxHxW=ctx.p_OxNxHxW.at[c].add(dp), kernel=ctx.kernel.at[..., c].set(kernel[..., c])
        )

    def _fold(self, stage, ctx, kernel, keep):
        """Brings every cached channel but `keep` (-1: none) up to the current kernel."""
        mask_O = jnp.arange(kernel.shape[-1]) != keep
        dk = jnp.where(mask_O, kernel - ctx.kernel, 0)
        return ctx.replace(
            p_OxNxHxW=ctx.p_OxNxHxW + self._conv_output(stage, ctx.x_in, dk),
            kernel=jnp.where(mask_O, kernel, ctx.kernel),
        )

    def settle(self, ctx, params, path):
        """`ctx` with every pending change folded in: equal to `prepare` with `params`."""
        _, stage, leaf = self._stage(path)
        if stage is None or leaf != "Conv_0/kernel":
            return ctx
        return self._fold(stage, ctx, params[path.split("/", 1)[0]]["Conv_0"]["kernel"], keep=-1)
