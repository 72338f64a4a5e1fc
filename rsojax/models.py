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
import jax.numpy as jnp
from jax import lax

# He initialisation as the paper states it: N(0, sqrt(2 / fan_in)), not truncated.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


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
    """Global average pool -> dense without bias (no ReLU after the last BN, as the reference)."""

    classes: int = 10

    searched = ("Dense_0/kernel",)

    @nn.compact
    def __call__(self, x_BxHxWxC, train: bool):
        del train
        x_BxC = x_BxHxWxC.mean(axis=(1, 2))
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


def mnist_convnet(channels: int = 16, classes: int = 10) -> Sequential:
    """The paper's 6-conv MNIST network: 11,824 weights + 192 BN parameters.

    Six 3x3 convolutions without bias, 2x2 average pool after conv 2 and conv 4
    (28 -> 14 -> 7), BN after each, ReLU at the start of the next block, global average
    pool and a dense layer 16 -> 10 without bias.
    """
    pools = (False, True, False, True, False, False)
    blocks = [ConvBlock(channels, pool=p, relu_in=i > 0) for i, p in enumerate(pools)]
    return Sequential(stages=(*blocks, PoolHead(classes)), input_shape=(28, 28, 1))


def mlp(
    hidden: Sequence[int] = (32, 32), classes: int = 10, input_shape: tuple[int, ...] = (784,)
) -> Sequential:
    """A small MLP: dense layers with bias and ReLU between them; inputs flattened."""
    widths = (*hidden, classes)
    stages = tuple(DenseBlock(w, relu_in=i > 0) for i, w in enumerate(widths))
    return Sequential(stages=stages, input_shape=input_shape)
