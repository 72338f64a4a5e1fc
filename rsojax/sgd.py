"""The gradient baseline: optax SGD with momentum on the same network and data.

BN runs in batch mode during training, as in RSO's search, and evaluation uses the same rule
(`rsojax.evaluation.accuracy`), so the two optimizers are compared on equal terms.
"""

import jax
import optax

from rsojax.losses import summed_cross_entropy
from rsojax.models import Sequential
from rsojax.sharding import check_batch, replicate, shard_batch


def make_epoch(model: Sequential, optimizer: optax.GradientTransformation, batch_size: int, mesh=None):
    """`epoch(params, opt_state, key, x, y) -> (params, opt_state, mean_loss)`.

    With a `mesh` (`rsojax.sharding`), standard data parallelism: each minibatch is split over
    the mesh's devices, parameters, optimizer state and data are replicated, and the gradient
    is all-reduced, so the steps are those of one device.

    One epoch visits the minibatches of a fresh permutation (the last partial batch is
    dropped) with one jitted step each. The steps are not fused into a `lax.scan`: on XLA's
    CPU backend the convolution gradients inside a loop body compile to far slower code than
    the same step called from Python.
    """

    check_batch(batch_size, mesh)

    def loss_fn(params, x, y):
        return summed_cross_entropy(model.apply({"params": params}, x, train=True), y) / x.shape[0]

    @jax.jit
    def step(params, opt_state, x, y, batches, i):
        idx = shard_batch(batches[i], mesh)
        loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def epoch(params, opt_state, key, x, y):
        steps = x.shape[0] // batch_size
        batches = jax.random.permutation(key, x.shape[0])[: steps * batch_size].reshape(steps, batch_size)
        params, opt_state, x, y, batches = replicate((params, opt_state, x, y, batches), mesh)
        total = 0.0
        for i in range(steps):
            params, opt_state, loss = step(params, opt_state, x, y, batches, i)
            total += loss
        return params, opt_state, total / steps

    return epoch
