"""The loss RSO minimises: softmax cross-entropy summed over the batch, as the reference code.

The reference computes log-softmax and the sum in float64 from the network's float32 logits.
JAX here runs without x64, so this module computes the same number in the logits' dtype,
within about one ulp of the total whatever the batch size:

- Per example, ce = log1p(t) - (z_y - m), with m the largest logit and t the sum of
  exp(z_k - m) over the other classes. Both terms are >= 0, so nothing cancels and ce has a
  relative error of a few ulps even when it is tiny late in training. The usual
  logsumexp(z) - z_y cancels there: an error of about ulp(|z_y|) per example, whatever ce is.
- The batch sum is a pairwise tree of TwoSum steps (Knuth; Ogita, Rump & Oishi 2005): each
  addition's exact rounding error is carried and added back once at the end, so the sum's
  error is about one ulp of the total instead of growing with log2(B) (pairwise) or B
  (sequential).

The bound, at batch 5000 late in training (ce ~ 0.02, total ~ 100, one float32 ulp of the
total 7.6e-6): a few eps x total <= 4e-5 in the worst case, within one ulp in practice
(tests/test_losses.py, where a plain float32 sum of the same losses errs by more). That is far
below the gap between the best two candidates late in training (a median of 0.033 on the
paper's MNIST protocol, docs/results.md) and below the float32 forward pass's own error
(logits off by a few ulps of the largest move the total by about 4e-5 at batch 5000), so
near-ties are decided by the float32 network, as in the reference, not by the reduction. The extra
arithmetic is a few vector operations per example, small against any network's forward pass.
float64 logits take the same code, in float64.
"""

import jax
import jax.numpy as jnp


def summed_cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Sum over the batch of -log softmax(logits)[label], accurate to a few ulps of the sum.

    Args:
      logits_BxK: the network's outputs, any float dtype.
      labels_B: integer class labels.

    Returns:
      A scalar of the logits' dtype.
    """
    return compensated_sum(cross_entropy(logits_BxK, labels_B))


def cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Per-example -log softmax(logits)[label] = log1p(t) - (z_y - m), to a few ulps of itself.

    m is the largest logit and t the sum of exp(z_k - m) over the classes other than one
    maximum (the others below m, plus 1 for each further tie). m is `jnp.max`, not held
    constant, so that autodiff gives softmax - onehot (SGD differentiates this loss).
    """
    shifted_BxK = logits_BxK - jnp.max(logits_BxK, axis=-1, keepdims=True)
    ties_B = jnp.sum(shifted_BxK == 0, axis=-1) - 1
    t_B = jnp.sum(jnp.where(shifted_BxK < 0, jnp.exp(shifted_BxK), 0), axis=-1) + ties_B
    return jnp.log1p(t_B) - jnp.take_along_axis(shifted_BxK, labels_B[:, None], axis=-1)[:, 0]


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """s = fl(a + b) and its rounding error e, so that a + b = s + e exactly (Knuth's TwoSum)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def compensated_sum(x_B: jax.Array) -> jax.Array:
    """Sum of a 1-d array by a pairwise tree of TwoSum steps; the errors are summed alongside
    and added once, so the result is within about one ulp of the exact sum."""
    n = max(1, 1 << (x_B.shape[0] - 1).bit_length())
    s = jnp.pad(x_B, (0, n - x_B.shape[0]))
    e = jnp.zeros_like(s)
    while s.shape[0] > 1:
        s, err = two_sum(s[0::2], s[1::2])
        e = e[0::2] + e[1::2] + err
    return s[0] + e[0]
