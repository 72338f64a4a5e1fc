"""The networks of the RSO paper (Tripathi & Singh, arXiv 2005.05955) as Flax Linen modules.

Every model is a `Sequential` of stages, and `Sequential.__call__(x, train, start)` is the one
forward pass of the model: the full network (`start=0`), the suffix that the cached evaluator
runs from a cached stage input (`start=d`), and evaluation all go through it.

A stage is a Linen module with `__call__(x, train)` and a class attribute `searched`: the
relative paths of its searched parameters in the order RSO visits them inside the stage
(the reference code's order: kernel, then BN beta, then BN gamma).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

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
    def __call__(self, x, train: bool):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
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


class ConvBlock(nn.Module):
    """[ReLU] -> 3x3 conv (no bias) -> [2x2 average pool] -> BN, as in the reference code.

    The ReLU of a block is applied at the start of the next block, so a cached stage input
    is the previous block's BN output, as the reference code caches it.
    """

    features: int
    pool: bool = False
    relu_in: bool = True

    searched = ("Conv_0/kernel", "BatchNorm_0/bias", "BatchNorm_0/scale")

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool):
        x = nn.relu(x_BxHxWxC) if self.relu_in else x_BxHxWxC
        x = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=he_normal)(x)
        if self.pool:
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return BatchNorm()(x, train)


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
        """The searched parameters in execution order of their stages."""
        return [
            f"stages_{i}/{leaf}"
            for i, stage in enumerate(self.stages)
            for leaf in type(stage).searched
            if not kernels_only or leaf.endswith("kernel")
        ]

    def search_order(self, kernels_only: bool = False) -> list[str]:
        """RSO's visiting order: last stage first, inside a stage its `searched` order."""
        return [
            f"stages_{i}/{leaf}"
            for i in reversed(range(len(self.stages)))
            for leaf in type(self.stages[i]).searched
            if not kernels_only or leaf.endswith("kernel")
        ]


def stage_of(path: str) -> int:
    """The stage index of a parameter path `stages_<i>/...`."""
    head = path.split("/", 1)[0]
    if not head.startswith("stages_") or not head[len("stages_"):].isdigit():
        raise ValueError(f"layers: {path!r} is not a parameter path of a Sequential model")
    return int(head[len("stages_"):])


def mnist_convnet(channels: int = 16, classes: int = 10, global_pool: str = "max") -> Sequential:
    """The paper's 6-conv MNIST network: 11,824 weights + 192 BN parameters.

    Six 3x3 convolutions without bias, 2x2 average pool after conv 2 and conv 4
    (28 -> 14 -> 7), BN after each, ReLU at the start of the next block, a global pool (max,
    as the reference code; "avg" as an option) and a dense layer 16 -> 10 without bias.
    """
    pools = (False, True, False, True, False, False)
    blocks = [ConvBlock(channels, pool=p, relu_in=i > 0) for i, p in enumerate(pools)]
    head = PoolHead(classes, global_pool=check_global_pool(global_pool))
    return Sequential(stages=(*blocks, head), input_shape=(28, 28, 1))


def mlp(
    hidden: Sequence[int] = (32, 32), classes: int = 10, input_shape: tuple[int, ...] = (784,)
) -> Sequential:
    """A small MLP: dense layers with bias and ReLU between them; inputs flattened."""
    widths = (*hidden, classes)
    stages = tuple(DenseBlock(w, relu_in=i > 0) for i, w in enumerate(widths))
    return Sequential(stages=stages, input_shape=input_shape)


class ResidualNet(nn.Module):
    """The reference code's 10-layer CIFAR-10 network: nine 3x3 convolutions and a dense layer.

    Block i: [ReLU] -> 3x3 conv i (no bias) -> [+ the BN output of block i - 2, for i = 3, 5,
    7, 9, through a 1x1 conv + BN where the channel count changes] -> [2x2 average pool after
    conv 3 and conv 5] -> BN. Then a global pool (max, as the reference code) and dense
    without bias.

    Not a `Sequential`: a residual addition reads the output of the block two back, which a
    chain of stages passing one array does not carry. Rather than widen every stage's interface
    for one network, this is one module (its only forward pass), searched with the `Generic`
    evaluator in the explicit order of `search_order`: correct and simple; `Cached` does not
    apply (no stage inputs to cache).

    Attributes:
      channels: output channels of the convolutions, in order.
      pools: 1-based numbers of the convolutions followed by a 2x2 average pool.
      classes: outputs of the dense layer.
      input_shape: the shape of one example.
      global_pool: "max" (the reference code) or "avg".
    """

    channels: Sequence[int] = (16, 16, 16, 32, 32, 32, 32, 32, 32)
    pools: Sequence[int] = (3, 5)
    classes: int = 10
    input_shape: tuple[int, ...] = (32, 32, 3)
    global_pool: str = "max"

    def shortcuts(self) -> list[int]:
        """The 1-based convolutions whose residual input needs a 1x1 conv + BN."""
        return [i for i in self._residual_targets() if self.channels[i - 1] != self.channels[i - 3]]

    def _residual_targets(self) -> range:
        return range(3, len(self.channels) + 1, 2)

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool = True):
        h, outputs = x_BxHxWxC, []
        for i, features in enumerate(self.channels, start=1):
            y = nn.Conv(features, (3, 3), padding=1, use_bias=False, kernel_init=he_normal, name=f"conv_{i}")(
                nn.relu(h) if i > 1 else h
            )
            if i in self._residual_targets():
                skip = outputs[i - 3]
                if i in self.shortcuts():
                    skip = nn.Conv(features, (1, 1), use_bias=False, kernel_init=he_normal, name=f"shortcut_{i}")(skip)
                    skip = BatchNorm(name=f"shortcut_bn_{i}")(skip, train)
                y = y + skip
            if i in self.pools:
                y = nn.avg_pool(y, (2, 2), strides=(2, 2))
            h = BatchNorm(name=f"bn_{i}")(y, train)
            outputs.append(h)
        return nn.Dense(self.classes, use_bias=False, kernel_init=he_normal, name="dense")(global_pool_2d(h, self.global_pool))

    def search_order(self, kernels_only: bool = False) -> list[str]:
        """Dense first, then block 9 down to block 1; inside a block the conv kernel, BN beta,
        BN gamma (as `ConvBlock.searched`), then the block's shortcut conv and BN, if any (it
        feeds the same addition, from an earlier layer)."""
        order = ["dense/kernel"]
        for i in reversed(range(1, len(self.channels) + 1)):
            units = [(f"conv_{i}", f"bn_{i}")] + ([(f"shortcut_{i}", f"shortcut_bn_{i}")] if i in self.shortcuts() else [])
            for conv, bn in units:
                order += [f"{conv}/kernel"] + ([] if kernels_only else [f"{bn}/bias", f"{bn}/scale"])
        return order


def cifar10_resnet(channels: int = 16, classes: int = 10, global_pool: str = "max") -> ResidualNet:
    """The paper's 10-layer CIFAR-10 network: about 57,100 searched parameters at 16 channels.

    Convolutions of `channels` x (1, 1, 1, 2, 2, 2, 2, 2, 2), average pools after conv 3 and
    conv 5 (32 -> 16 -> 8), residual additions conv 1 -> 3 -> 5 -> 7 -> 9 (a 1x1 conv + BN into
    conv 5, where the channels double), a global pool (max, as the reference code; "avg" as an
    option), dense to `classes`.
    """
    widths = tuple(channels * m for m in (1, 1, 1, 2, 2, 2, 2, 2, 2))
    return ResidualNet(channels=widths, classes=classes, global_pool=check_global_pool(global_pool))
