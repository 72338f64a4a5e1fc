"""The networks of the RSO paper (Tripathi & Singh, arXiv 2005.05955) as Flax Linen modules.

Every model is a `Sequential` of stages, and `Sequential.__call__(x, train, start)` is the one
forward pass of the model: the full network (`start=0`), the suffix that the cached evaluator
runs from a cached stage input (`start=d`), and evaluation all go through it.

A stage is a Linen module with `__call__(x, train)` and an attribute `searched`: the
relative paths of its searched parameters in the order RSO visits them inside the stage
(the reference code's order: kernel, then BN beta, then BN gamma). The activation between
stages is an array, or a pytree of arrays where a later stage reads more than its
predecessor's output (the residual network's skip tensors, `ResidualBlock`).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rsojax.conv_kernel import avg_pool_2x2, conv3x3, resolve_conv

# He initialisation as the paper states it: N(0, sqrt(2 / fan_in)), not truncated.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# The global pool before the dense layer. The reference code's `nd.Pooling(global_pool=True)`
# names no pool_type, and MXNet's default is max; "avg" is the reading of the paper's text.
GLOBAL_POOLS = ("max", "avg")


def check_global_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool: expected one of {list(GLOBAL_POOLS)}, got {global_pool!r}")
    return global_pool


def global_pool_2d(x_BxHxWxC: jax.Array, global_pool: str) -> jax.Array:
    """Max or mean over the spatial axes: (B, H, W, C) -> (B, C)."""
    return x_BxHxWxC.max(axis=(1, 2)) if global_pool == "max" else x_BxHxWxC.mean(axis=(1, 2))


class BatchNorm(nn.Module):
    """Batch normalisation over all axes but the last.

    `train=True` normalises with the statistics of the batch itself (RSO's search mode, the
    reference code's `use_global_stats=False`) and, when the `batch_stats` collection is
    mutable, stores them: that is how `rsojax.evaluation.bn_statistics` takes the statistics
    of the first training images. `train=False` uses the stored statistics.
    """

    epsilon: float = 1e-3  # MXNet's BatchNorm default, which produced the paper's numbers.

    @nn.compact
    def __call__(self, x, train: bool, stats: tuple | None = None):
        """`stats`: the batch's `(mean, var)` of `x` where its producer computed them (the
        Pallas convolution, `rsojax.conv_kernel`); used in place of BN's own in search mode."""
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        if train:
            axes = tuple(range(x.ndim - 1))
            if stats is None:
                mean = x.mean(axes)
                var = jnp.square(x - mean).mean(axes)
            else:
                mean, var = stats
            if self.is_mutable_collection("batch_stats"):
                self.put_variable("batch_stats", "mean", mean)
                self.put_variable("batch_stats", "var", var)
        else:
            if not self.has_variable("batch_stats", "mean"):
                raise ValueError(
                    "variables: evaluation mode needs 'batch_stats'; compute them with "
                    "rsojax.bn_statistics(model, params, x_train)"
                )
            mean = self.get_variable("batch_stats", "mean")
            var = self.get_variable("batch_stats", "var")
        return (x - mean) * lax.rsqrt(var + self.epsilon) * scale + bias


class Conv3x3(nn.Module):
    """The networks' 3x3 convolution (padding 1, no bias; parameter `kernel`, as `nn.Conv`
    names and initialises it), on backend `conv` (`rsojax.conv_kernel`), followed by the 2x2
    average pool with `pool`.

    Returns `(y, stats)`: stats are y's `(mean, var)` per channel where the backend computed
    them with y, else None.
    """

    features: int
    conv: str = "xla"
    pool: bool = False

    @nn.compact
    def __call__(self, x_BxHxWxC):
        kernel = self.param("kernel", he_normal, (3, 3, x_BxHxWxC.shape[-1], self.features), jnp.float32)
        x_BxHxWxC, kernel = nn.dtypes.promote_dtype(x_BxHxWxC, kernel, dtype=None)
        return conv3x3(x_BxHxWxC, kernel, self.conv, self.pool)


class ConvBlock(nn.Module):
    """[ReLU] -> 3x3 conv (no bias) -> [2x2 average pool] -> BN, as in the reference code.

    The ReLU of a block is applied at the start of the next block, so a cached stage input
    is the previous block's BN output, as the reference code caches it. `conv` is the
    convolution's backend (`rsojax.conv_kernel.CONVS`); BN takes the statistics the backend
    computed with the conv where nothing comes between them.
    """

    features: int
    pool: bool = False
    relu_in: bool = True
    conv: str = "xla"

    searched = ("Conv_0/kernel", "BatchNorm_0/bias", "BatchNorm_0/scale")

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool):
        x = nn.relu(x_BxHxWxC) if self.relu_in else x_BxHxWxC
        x, stats = Conv3x3(self.features, self.conv, self.pool, name="Conv_0")(x)
        return BatchNorm()(x, train, stats)


class PoolHead(nn.Module):
    """Global pool (max, as the reference code) -> dense without bias (no ReLU after the last
    BN, as the reference)."""

    classes: int = 10
    global_pool: str = "max"

    searched = ("Dense_0/kernel",)

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool):
        del train
        x_BxC = global_pool_2d(x_BxHxWxC, self.global_pool)
        return nn.Dense(self.classes, use_bias=False, kernel_init=he_normal)(x_BxC)


class DenseBlock(nn.Module):
    """[ReLU] -> dense with bias; the MLP's stage."""

    features: int
    relu_in: bool = True

    searched = ("Dense_0/kernel", "Dense_0/bias")

    @nn.compact
    def __call__(self, x_BxD, train: bool):
        del train
        x = nn.relu(x_BxD) if self.relu_in else x_BxD
        return nn.Dense(self.features, kernel_init=he_normal)(x)


class Sequential(nn.Module):
    """A chain of stages with one forward pass that can start at any stage.

    Attributes:
      stages: the stages in execution order; their parameters live under `stages_<i>`.
      input_shape: the shape of one example, used to check data before work starts.
    """

    stages: Sequence[nn.Module]
    input_shape: tuple[int, ...]

    def __call__(self, x, train: bool = True, start: int = 0, stop: int | None = None):
        """Runs stages `start` to `stop - 1`: the input of stage `start` to the output of stage
        `stop - 1` (the whole network by default)."""
        for stage in self.stages[start:stop]:
            x = stage(x, train)
        return x

    def layer_paths(self, kernels_only: bool = False) -> list[str]:
        """The searched parameters in execution order of their stages.

        Args:
          kernels_only: only the kernels (conv and dense), not BN's gamma and beta.

        Returns:
          Parameter paths such as `"stages_0/Conv_0/kernel"`.
        """
        return [
            f"stages_{i}/{leaf}"
            for i, stage in enumerate(self.stages)
            for leaf in stage.searched
            if not kernels_only or leaf.endswith("kernel")
        ]

    def search_order(self, kernels_only: bool = False) -> list[str]:
        """RSO's visiting order: last stage first, inside a stage its `searched` order.

        Args:
          kernels_only: only the kernels (conv and dense), not BN's gamma and beta.

        Returns:
          Parameter paths, as `RSO`'s `layers` take them.
        """
        return [
            f"stages_{i}/{leaf}"
            for i in reversed(range(len(self.stages)))
            for leaf in self.stages[i].searched
            if not kernels_only or leaf.endswith("kernel")
        ]


def stage_of(path: str) -> int:
    """The stage index of a parameter path `stages_<i>/...`."""
    head = path.split("/", 1)[0]
    if not head.startswith("stages_") or not head[len("stages_"):].isdigit():
        raise ValueError(f"layers: {path!r} is not a parameter path of a Sequential model")
    return int(head[len("stages_"):])


def mnist_convnet(channels: int = 16, classes: int = 10, global_pool: str = "max", conv: str = "xla") -> Sequential:
    """The paper's 6-conv MNIST network: 11,824 weights + 192 BN parameters.

    Six 3x3 convolutions without bias, 2x2 average pool after conv 2 and conv 4
    (28 -> 14 -> 7), BN after each, ReLU at the start of the next block, a global pool (max,
    as the reference code; "avg" as an option) and a dense layer 16 -> 10 without bias.

    Args:
      channels: output channels of every conv (16: the paper's network).
      classes: outputs of the dense layer.
      global_pool: "max" (the reference code's) or "avg".
      conv: the 3x3 convolutions' backend (`rsojax.conv_kernel.CONVS`; "xla" by default).

    Returns:
      The network, taking (N, 28, 28, 1) images.

    Raises:
      ValueError: `global_pool` is unknown.
    """
    pools = (False, True, False, True, False, False)
    conv = resolve_conv(conv)
    blocks = [ConvBlock(channels, pool=p, relu_in=i > 0, conv=conv) for i, p in enumerate(pools)]
    head = PoolHead(classes, global_pool=check_global_pool(global_pool))
    return Sequential(stages=(*blocks, head), input_shape=(28, 28, 1))


def mlp(
    hidden: Sequence[int] = (32, 32), classes: int = 10, input_shape: tuple[int, ...] = (784,)
) -> Sequential:
    """A small MLP: dense layers with bias and ReLU between them; inputs flattened.

    Args:
      hidden: the widths of the hidden layers.
      classes: outputs of the last layer.
      input_shape: the shape of one example.

    Returns:
      The network.
    """
    widths = (*hidden, classes)
    stages = tuple(DenseBlock(w, relu_in=i > 0) for i, w in enumerate(widths))
    return Sequential(stages=stages, input_shape=input_shape)


class ResidualBlock(nn.Module):
    """ReLU -> 3x3 conv (no bias) -> [+ skip] -> [2x2 average pool] -> BN: a block of the
    residual network, as a stage whose input and output carry the tensor a residual addition reads.

    A residual addition reads the BN output of the block two back, which a chain passing one array
    does not carry; so the stage input is `h`, or `(h, skip)` if this block adds a residual,
    and the output is `y`, or `(y, h)` if the next block adds one: this block's input (the BN
    output of the block before) passed on as that block's skip. Only what a later stage reads
    lives between stages, and the caching pass caches exactly that.

    Attributes:
      features: output channels of the 3x3 conv.
      pool: a 2x2 average pool after the addition.
      residual: the input is `(h, skip)`; skip is added to the conv output (before pool and BN).
      shortcut: skip goes through a 1x1 conv (no bias) + BN first, where its channels differ.
      keep: the output is `(y, h)`, h the next block's skip.
      conv: the 3x3 convolution's backend (`rsojax.conv_kernel.CONVS`), as in `ConvBlock`.
    """

    features: int
    pool: bool = False
    residual: bool = False
    shortcut: bool = False
    keep: bool = False
    conv: str = "xla"

    @property
    def searched(self) -> tuple[str, ...]:
        """ConvBlock's order, then the shortcut's conv and BN, which feed the same addition."""
        shortcut = ("shortcut_conv/kernel", "shortcut_bn/bias", "shortcut_bn/scale") if self.shortcut else ()
        return ConvBlock.searched + shortcut

    @nn.compact
    def __call__(self, x, train: bool):
        h_BxHxWxC, skip = x if self.residual else (x, None)
        # The pool, linear, is taken of the conv and of the skip apart: pool(conv(x) + skip) is
        # pool(conv(x)) + pool(skip), and the conv and the pool are then one strided correlation.
        y, stats = Conv3x3(self.features, self.conv, self.pool, name="Conv_0")(nn.relu(h_BxHxWxC))
        if self.residual:
            if self.shortcut:
                skip = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=he_normal, name="shortcut_conv")(skip)
                skip = BatchNorm(name="shortcut_bn")(skip, train)
            y, stats = y + (avg_pool_2x2(skip) if self.pool else skip), None
        y = BatchNorm(name="BatchNorm_0")(y, train, stats)
        return (y, h_BxHxWxC) if self.keep else y


class ResidualNet(Sequential):
    """A residual network as a `Sequential`: a ConvBlock, `ResidualBlock`s and a `PoolHead`.

    The activation between two stages is a pytree (`ResidualBlock`): the block's input and, where
    a later addition reads it, the skip tensor. `start` and `stop` cut the network at any stage,
    so the cached evaluators and the reference's caching pass work as for the MNIST network.

    Attributes:
      stages: the stages in execution order; their parameters live under `stages_<i>`.
      input_shape: the shape of one example, used to check data before work starts.
    """

    @property
    def global_pool(self) -> str:
        """The head's global pool, "max" or "avg"."""
        return self.stages[-1].global_pool


def cifar10_resnet(channels: int = 16, classes: int = 10, global_pool: str = "max", conv: str = "xla") -> ResidualNet:
    """The reference code's 10-layer CIFAR-10 network: 57,104 searched parameters at 16 channels.

    Block i = 1..9: [ReLU, for i > 1] -> 3x3 conv i (no bias, `channels` x (1, 1, 1, 2, 2, 2,
    2, 2, 2) outputs) -> [+ the BN output of block i - 2, for i = 3, 5, 7, 9, through a 1x1
    conv + BN into block 5, where the channels double] -> [2x2 average pool after conv 3 and
    conv 5: 32 -> 16 -> 8] -> BN. Then a global pool (max, as the reference code; "avg" as an
    option) and dense to `classes` without bias.

    Stage i - 1 is block i (`stages_8` is block 9, `stages_9` the head); the parameters of a
    block, its shortcut's too, live under its stage (`stages_4/Conv_0/kernel`,
    `stages_4/shortcut_conv/kernel`), so they share one minibatch shuffle per cycle.

    Args:
      channels: output channels of blocks 1-3, twice that from block 4 on (16: the paper's).
      classes: outputs of the dense layer.
      global_pool: "max" (the reference code's) or "avg".
      conv: the 3x3 convolutions' backend (`rsojax.conv_kernel.CONVS`; "xla" by default).

    Returns:
      The network, taking (N, 32, 32, 3) images.

    Raises:
      ValueError: `global_pool` is unknown.
    """
    widths = tuple(channels * m for m in (1, 1, 1, 2, 2, 2, 2, 2, 2))
    targets = range(3, len(widths) + 1, 2)  # the blocks that add the output of block i - 2
    conv = resolve_conv(conv)
    blocks = [ConvBlock(widths[0], relu_in=False, conv=conv)]  # block 1 neither adds nor passes on a skip
    for i in range(2, len(widths) + 1):
        residual = i in targets
        shortcut = residual and widths[i - 1] != widths[i - 3]
        blocks.append(ResidualBlock(widths[i - 1], i in (3, 5), residual, shortcut, keep=i + 1 in targets, conv=conv))
    head = PoolHead(classes, global_pool=check_global_pool(global_pool))
    return ResidualNet(stages=(*blocks, head), input_shape=(32, 32, 3))
