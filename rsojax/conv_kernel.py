"""The networks' 3x3 convolution, computed by XLA or by a Pallas kernel that also returns BN's statistics.

Every 3x3 convolution of `rsojax.models` (stride 1, padding 1, no bias, NHWC input, HWIO
kernel), with the 2x2 average pool that follows it in a pooled block, goes through
`conv3x3(x, kernel, conv, pool)`; `conv` is a field of the stages, so the one forward pass of a
model runs on either backend and the choice is part of every jit's cache key (the model is a
static argument):

- "xla": `lax.conv_general_dilated`, what `flax.linen.Conv` computes (cuDNN on a GPU); a
  pooled block's conv and pool as one 4x4 correlation with stride 2, and a conv of at most 3
  input channels (a network's first) as shifted multiply-adds (`conv3x3_xla`).
- "pallas": `conv3x3_pallas`, a Pallas kernel (Triton lowering on a GPU), in true float32 (its
  dots are `Precision.HIGHEST`, which Triton lowers to IEEE, never TF32), that returns the
  per-channel mean and variance of its output with it, so BN's statistics cost no second read
  of the output. Channel counts other than a power of two of at least 16 (the first conv of
  each network, 1 or 3 input channels) stay on XLA. Off a GPU the kernel runs in Pallas's
  interpret mode: the same arithmetic, very slowly; that is for tests.
- "auto": XLA. It is meant to become the kernel on GPUs where it lowers, once a GPU run shows
  it faster with the same decisions (docs/gpu-kernel.md); until then it is XLA everywhere.

The kernel works on each image padded by one pixel and flattened, all images one after the
other: (B * (H+2) * (W+2), C) rows. Output row p is then the sum over the 9 taps of input row
p + (kh - 1) * (W + 2) + (kw - 1) times the tap's (C, O) matrix: 9 dots of a tile of rows,
with no halo logic, since an interior pixel's neighbours lie in its own image's frame. The grid
runs over tiles of `block_rows` rows (images and tiles need not align); under `jax.vmap` (the
three candidates of a weight) Pallas adds the candidate axis to the grid. The border rows
compute values that are dropped, and the statistics mask them out. Each tile writes its
per-channel sum and its sum of squared deviations from its own mean; the tiles are combined
with Chan et al.'s pairwise formula, as stable as BN's two-pass variance.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

CONVS = ("xla", "pallas", "auto")
BLOCK_ROWS = 128  # rows (pixels) per program: a power of two (Triton's tiles), tunable per card
NUM_WARPS = 4  # Triton warps per program
# Input channels up to which `conv3x3_xla` is shifted multiply-adds rather than XLA's
# convolution: a network's first conv (grey or RGB images), and every conv of a network that
# narrow (the tests' 2-channel ones). With so few channels, XLA's CPU
# convolution spends its time packing its input and runs several times slower than the
# multiply-adds (docs/results.md); on a GPU both are a pass over memory.
FEW_CHANNELS = 3


def check_conv(conv: str) -> str:
    """Validates a convolution backend name (`CONVS`); returns it."""
    if conv not in CONVS:
        raise ValueError(f"conv: expected one of {list(CONVS)}, got {conv!r}")
    return conv


def resolve_conv(conv: str) -> str:
    """The backend a setting stands for: "auto" is "xla", as no GPU run has yet shown the kernel
    faster with the same decisions (docs/gpu-kernel.md)."""
    return "xla" if check_conv(conv) == "auto" else conv


def supported(c_in: int, c_out: int) -> bool:
    """Whether the kernel computes a conv of these channel counts: powers of two >= 16, the
    smallest dot Triton tiles."""
    return all(c >= 16 and c & (c - 1) == 0 for c in (c_in, c_out))


def avg_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """The blocks' 2x2 average pool with stride 2 (`nn.avg_pool(x, (2, 2), strides=(2, 2))`,
    an odd last row or column dropped), written as four strided slices: XLA:CPU (jax 0.10) fuses
    a reduce-window with its neighbours into kernels many times slower than either alone (in a
    CIFAR-10 block-2 weight's candidates, 110 of 380 ms)."""
    h, w = x_BxHxWxC.shape[1] // 2 * 2, x_BxHxWxC.shape[2] // 2 * 2
    x = x_BxHxWxC[:, :h, :w]
    return (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) * 0.25


def pooled_taps(taps_3x3x: jax.Array) -> jax.Array:
    """The taps of a 3x3 convolution followed by `avg_pool_2x2`, as one 4x4 correlation with
    stride 2 (padding 1): each 3x3 tap lands on 4 of the 16, once per pool position, with
    weight 1/4. Leading axes (3, 3), any trailing axes (channels)."""
    rest = ((0, 0),) * (taps_3x3x.ndim - 2)
    return sum(jnp.pad(taps_3x3x, ((a, 1 - a), (b, 1 - b), *rest)) for a in range(2) for b in range(2)) * 0.25


def conv3x3_single(x_BxHxW: jax.Array, taps_3x3x: jax.Array, pool: bool = False) -> jax.Array:
    """The 3x3 convolution (padding 1; with `pool`, then `avg_pool_2x2`) of one input channel, as
    shifted multiply-adds (XLA's CPU convolution is slow with few input channels): taps
    (3, 3, O) give (B, H', W', O), taps (3, 3) one output channel (B, H', W'), without a minor
    axis of size 1, which XLA:CPU would not vectorise. With `pool`, one 4x4 correlation with
    stride 2 (`pooled_taps`): 16 multiply-adds per output instead of 36."""
    h, w = x_BxHxW.shape[1:]
    if not pool:
        x_pad = jnp.pad(x_BxHxW, ((0, 0), (1, 1), (1, 1)))
        x_pad = x_pad[..., None] if taps_3x3x.ndim == 3 else x_pad
        return sum(x_pad[:, u : u + h, v : v + w] * taps_3x3x[u, v] for u in range(3) for v in range(3))
    taps, h_out, w_out = pooled_taps(taps_3x3x), h // 2, w // 2
    rows = jnp.pad(x_BxHxW, ((0, 0), (1, 1), (0, 0)))  # row r + 1 is x's row r
    if taps.ndim == 2:
        # Output column q reads x's columns 2q - 1, 2q, 2q + 1, 2q + 2: odd column q - 1, even
        # q, odd q, even q + 1. Taken from the even and the odd columns apart (the same sums),
        # XLA:CPU stores two padded copies of x and the correlation reads them at stride 2; a
        # fold takes about 30% less time so than with 16 strided reads of x itself
        # (docs/results.md).
        even = jnp.pad(rows, ((0, 0), (0, 0), (0, 1)))[:, :, 0 : 2 * w_out + 1 : 2]  # columns 0, 2, .., 2 w_out
        odd = jnp.pad(rows, ((0, 0), (0, 0), (1, 0)))[:, :, 0 : 2 * w_out + 1 : 2]  # columns -1, 1, .., 2 w_out - 1
        columns = (odd[..., :w_out], even[..., :w_out], odd[..., 1:], even[..., 1:])
    else:
        x_pad = jnp.pad(rows, ((0, 0), (0, 0), (1, 1)))[..., None]
        columns = tuple(x_pad[:, :, v : v + 2 * w_out : 2] for v in range(4))
    return sum(columns[v][:, u : u + 2 * h_out : 2] * taps[u, v] for u in range(4) for v in range(4))


def on_pallas(conv: str, c_in: int, c_out: int) -> bool:
    """Whether `conv3x3` runs a convolution of these channels on the Pallas kernel: backend
    `conv` resolves to "pallas" and the kernel supports the channels; else XLA computes it."""
    return resolve_conv(conv) == "pallas" and supported(c_in, c_out)


def conv3x3_xla(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, pool: bool = False) -> jax.Array:
    """3x3 conv, stride 1, padding 1, no bias, as `flax.linen.Conv` computes it; with `pool`,
    followed by `avg_pool_2x2`, computed as one 4x4 correlation with stride 2 (`pooled_taps`):
    16 multiply-adds per pooled output and channel pair instead of 36, and no full-size output
    to write and read back. A conv of `FEW_CHANNELS` input channels or fewer (a network's first)
    is shifted multiply-adds, channel by channel (`conv3x3_single`), in float32 on every backend.
    The values differ from `flax.linen.Conv`'s (and from the conv followed by the pool) by
    rounding only."""
    dtype = jnp.result_type(x_BxHxWxC, kernel_3x3xCxO)  # as `flax.linen.Conv` promotes
    x, kernel = x_BxHxWxC.astype(dtype), kernel_3x3xCxO.astype(dtype)
    if x.shape[-1] <= FEW_CHANNELS:
        y = conv3x3_single(x[..., 0], kernel[:, :, 0], pool)
        for c in range(1, x.shape[-1]):
            y = y + conv3x3_single(x[..., c], kernel[:, :, c], pool)
        return y
    kernel, strides = (pooled_taps(kernel), (2, 2)) if pool else (kernel, (1, 1))
    return lax.conv_general_dilated(x, kernel, strides, ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv3x3(x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, conv: str = "xla", pool: bool = False):
    """The networks' 3x3 convolution on backend `conv` (`CONVS`); with `pool`, followed by
    `avg_pool_2x2` (on XLA, in one strided correlation: `conv3x3_xla`).

    Returns:
      `(y, stats)`: y (B, H, W, O), or (B, H // 2, W // 2, O) with `pool`, and `(mean, var)` of
      y per channel over (B, H, W) where the Pallas kernel computed it, else None (BN then
      computes them from y).
    """
    if on_pallas(conv, *kernel_3x3xCxO.shape[2:]):
        y, mean, var = conv3x3_pallas(x_BxHxWxC, kernel_3x3xCxO)
        return (avg_pool_2x2(y), None) if pool else (y, (mean, var))
    return conv3x3_xla(x_BxHxWxC, kernel_3x3xCxO, pool), None


def _geometry(b: int, h: int, w: int, rows: int):
    """Static layout: the frame of one padded image, the rows computed, the tiles, each
    tile's count of interior (kept) rows, and the 9 taps' row shifts."""
    frame = (h + 2) * (w + 2)
    n_rows = b * frame
    tiles = -(-n_rows // rows)
    g = np.arange(tiles * rows)
    r, c = (g % frame) // (w + 2), (g % frame) % (w + 2)
    interior = (g < n_rows) & (r >= 1) & (r <= h) & (c >= 1) & (c <= w)
    shifts = tuple((kh - 1) * (w + 2) + (kw - 1) for kh in range(3) for kw in range(3))
    return frame, n_rows, tiles, interior.reshape(tiles, rows).sum(1), shifts


def _kernel(x_ref, w_ref, y_ref, sum_ref, m2_ref, *, rows, shifts, halo, frame, h, w, n_rows):
    """One tile of `rows` output rows: 9 shifted (rows, C) x (C, O) dots, then the tile's
    per-channel sum and sum of squared deviations over its interior rows."""
    start = pl.program_id(0) * rows
    acc = jnp.zeros((rows, y_ref.shape[-1]), y_ref.dtype)
    for k, shift in enumerate(shifts):
        x = x_ref[pl.ds(start + halo + shift, rows), :]
        acc += jnp.dot(x, w_ref[k], precision=lax.Precision.HIGHEST, preferred_element_type=acc.dtype)
    y_ref[...] = acc
    g = start + lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    r, c = (g % frame) // (w + 2), (g % frame) % (w + 2)
    keep = ((g < n_rows) & (r >= 1) & (r <= h) & (c >= 1) & (c <= w)).astype(acc.dtype)
    total = (acc * keep).sum(0)
    dev = (acc - total / jnp.maximum(keep.sum(), 1)) * keep
    sum_ref[...] = total
    m2_ref[...] = (dev * dev).sum(0)


@functools.partial(jax.jit, static_argnames=("block_rows", "interpret"))
def conv3x3_pallas(
    x_BxHxWxC: jax.Array, kernel_3x3xCxO: jax.Array, block_rows: int = BLOCK_ROWS, interpret: bool | None = None
):
    """The 3x3 convolution (stride 1, padding 1, no bias) and its output's BN statistics, as
    one Pallas kernel.

    Args:
      x_BxHxWxC: the input, NHWC.
      kernel_3x3xCxO: the kernel, HWIO; C and O powers of two >= 16 (`supported`).
      block_rows: output rows (pixels, borders included) per program, a power of two.
      interpret: run in Pallas's interpret mode; None: off a GPU only.

    Returns:
      `(y, mean, var)`: y (B, H, W, O), and per channel the mean and the (biased) variance of
      y over (B, H, W), as BN in search mode takes them.

    Raises:
      ValueError: shapes or a `block_rows` the kernel does not take.
    """
    b, h, w, c = x_BxHxWxC.shape
    if kernel_3x3xCxO.shape[:3] != (3, 3, c) or not supported(c, kernel_3x3xCxO.shape[3]):
        raise ValueError(f"kernel_3x3xCxO: expected (3, 3, {c}, O) with C, O powers of two >= 16, got {kernel_3x3xCxO.shape}")
    if block_rows < 16 or block_rows & (block_rows - 1):
        raise ValueError(f"block_rows: expected a power of two >= 16, got {block_rows}")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    o = kernel_3x3xCxO.shape[3]
    dtype = jnp.result_type(x_BxHxWxC, kernel_3x3xCxO)
    frame, n_rows, tiles, counts, shifts = _geometry(b, h, w, block_rows)
    halo = w + 3  # the largest row shift: every tile reads its rows +-halo, all in bounds
    x_rows = jnp.pad(x_BxHxWxC.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(n_rows, c)
    x_rows = jnp.pad(x_rows, ((halo, tiles * block_rows - n_rows + halo), (0, 0)))
    taps = kernel_3x3xCxO.astype(dtype).reshape(9, c, o)
    kernel = functools.partial(
        _kernel, rows=block_rows, shifts=shifts, halo=halo, frame=frame, h=h, w=w, n_rows=n_rows
    )
    y_rows, sums, m2s = pl.pallas_call(
        kernel,
        grid=(tiles,),
        in_specs=[pl.BlockSpec(x_rows.shape, lambda t: (0, 0)), pl.BlockSpec(taps.shape, lambda t: (0, 0, 0))],
        out_specs=[
            pl.BlockSpec((block_rows, o), lambda t: (t, 0)),
            pl.BlockSpec((None, o), lambda t: (t, 0)),
            pl.BlockSpec((None, o), lambda t: (t, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((tiles * block_rows, o), dtype),
            jax.ShapeDtypeStruct((tiles, o), dtype),
            jax.ShapeDtypeStruct((tiles, o), dtype),
        ],
        interpret=interpret,
        # Triton's lowering (this jax's default GPU lowering is Mosaic GPU, whose copies to
        # shared memory take at most 256 elements per dimension: the whole input is one block).
        compiler_params=pl_triton.CompilerParams(num_warps=NUM_WARPS),
        name="conv3x3_bn_stats",
    )(x_rows, taps)
    y = y_rows[:n_rows].reshape(b, h + 2, w + 2, o)[:, 1 : h + 1, 1 : w + 1]
    n_t = jnp.asarray(counts, dtype)[:, None]
    mean = sums.sum(0) / (b * h * w)
    tile_mean = sums / jnp.maximum(n_t, 1)
    var = (m2s.sum(0) + (n_t * jnp.square(tile_mean - mean)).sum(0)) / (b * h * w)
    return y, mean, var
