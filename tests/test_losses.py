import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsojax.losses import compensated_sum, cross_entropy, summed_cross_entropy


def literal_summed_cross_entropy(z_BxK, y_B) -> float:
    """The reference code's loss: log-softmax and the sum in float64."""
    z = np.asarray(z_BxK, np.float64)
    m = z.max(axis=-1)
    ce = m + np.log(np.exp(z - m[:, None]).sum(axis=-1)) - z[np.arange(len(z)), np.asarray(y_B)]
    return math.fsum(ce)


def logits(batch, margin, scale, seed):
    """float32 logits N(0, scale) with `margin` added to the label's."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (batch, 10)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    z[np.arange(batch), y] += margin
    return jnp.asarray(z), jnp.asarray(y)


# (margin, scale): late in training each loss is ~0.017, early ~2.3 (log 10)
REGIMES = {"late": (10.0, 2.0), "early": (0.0, 0.1)}


def naive_float32(regime, z, y) -> float:
    """The usual float32 loss where it errs: late, optax's lse - z_y cancels in each example
    (the sum is then accurate); early, a sequential float32 sum (a scan, one GPU thread) drifts."""
    if regime == "late":
        return float(jax.jit(lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).sum())(z, y))
    return float(np.cumsum(np.asarray(optax.softmax_cross_entropy_with_integer_labels(z, y)), dtype=np.float32)[-1])


@pytest.mark.parametrize("batch", [512, 5000])
@pytest.mark.parametrize("regime", list(REGIMES))
def test_float32_within_one_ulp_of_float64_reference(batch, regime):
    naive_ulps = []
    for seed in range(4):
        z, y = logits(batch, *REGIMES[regime], seed=seed)
        expected = literal_summed_cross_entropy(z, y)
        ulp = float(np.spacing(np.float32(expected)))
        got = jax.jit(summed_cross_entropy)(z, y)
        assert got.dtype == jnp.float32
        assert abs(float(got) - expected) <= ulp
        naive_ulps.append(abs(naive_float32(regime, z, y) - expected) / ulp)
    assert np.mean(naive_ulps) > 2  # measured 3.6-13 ulps on average


def late_training_logits(seed, batch=5000):
    """float32 logits late in training: most examples right by a wide margin (each loss ~1e-4),
    1 to 19 badly wrong (each loss 10-100)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (batch, 10)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    z[np.arange(batch), y] += 10.0
    wrong = rng.choice(batch, rng.integers(1, 20), replace=False)
    z[wrong, (y[wrong] + 1) % 10] += rng.uniform(10.0, 100.0, wrong.size).astype(np.float32)
    return z, y


def test_batch_sum_within_one_ulp_where_a_plain_sum_is_not():
    """The loss as the engine calls it (vmapped over three candidates' logits, jitted) stays
    within one ulp of the float64 reference on 48 batches; a plain float32 `jnp.sum` of the
    same per-example losses errs by more on some of them, so the compensated sum is what
    keeps the bound."""
    ours = jax.jit(jax.vmap(summed_cross_entropy))
    plain = jax.jit(jax.vmap(lambda z, y: jnp.sum(cross_entropy(z, y))))
    ulps, plain_ulps = [], []
    for seed in range(0, 48, 3):
        zs, ys = zip(*(late_training_logits(seed + k) for k in range(3)))
        z_3xBxK, y_3xB = jnp.asarray(np.stack(zs)), jnp.asarray(np.stack(ys))
        got, got_plain = ours(z_3xBxK, y_3xB), plain(z_3xBxK, y_3xB)
        assert got.dtype == jnp.float32
        for k in range(3):
            expected = literal_summed_cross_entropy(zs[k], ys[k])
            ulp = float(np.spacing(np.float32(expected)))
            ulps.append(abs(float(got[k]) - expected) / ulp)
            plain_ulps.append(abs(float(got_plain[k]) - expected) / ulp)
    assert max(ulps) <= 1.0, max(ulps)
    assert max(plain_ulps) > 1.5  # not vacuous: measured up to 2.05 ulps on XLA:CPU


def test_compensation_survives_jit_and_vmap():
    """Pairs (1, d) and (-1, d) round to 1 and -1 when d = 2^-26: a sum without the TwoSum
    errors (as if XLA had simplified them away) gives exactly 0."""
    d = 2.0**-26
    x = jnp.asarray(np.tile([1.0, d, -1.0, d], 1000), jnp.float32)
    exact = 2000 * d
    assert float(compensated_sum(x)) == exact
    assert float(jax.jit(compensated_sum)(x)) == exact
    got = jax.jit(jax.vmap(compensated_sum))(jnp.stack([x, -x, 2 * x]))
    assert np.all(np.asarray(got) == [exact, -exact, 2 * exact])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1001])
def test_compensated_sum_any_length(n):
    x = np.random.default_rng(n).uniform(0.0, 3.0, n).astype(np.float32)
    expected = math.fsum(x.astype(np.float64))
    got = jax.jit(compensated_sum)(jnp.asarray(x))
    assert got.dtype == jnp.float32
    assert abs(float(got) - expected) <= 0.5 * np.spacing(np.float32(expected))


def test_float64_logits_stay_float64():
    z, y = logits(300, 5.0, 1.0, seed=1)
    z = z.astype(jnp.float64) + jnp.asarray(np.random.default_rng(2).normal(0, 1e-3, z.shape))
    got = jax.jit(summed_cross_entropy)(z, y)
    assert got.dtype == jnp.float64
    assert float(got) == pytest.approx(literal_summed_cross_entropy(z, y), rel=1e-14)


def test_ties_and_gradient():
    """Tied maxima count once each in the normaliser; the gradient is softmax - onehot."""
    z = jnp.array([[2.0, 2.0, -1.0], [0.5, 3.0, 3.0], [1.0, 1.0, 1.0], [-4.0, 9.0, 0.0]], jnp.float64)
    y = jnp.array([0, 2, 1, 0])
    assert float(summed_cross_entropy(z, y)) == pytest.approx(literal_summed_cross_entropy(z, y), rel=1e-15)
    zn = np.asarray(z)
    softmax = np.exp(zn - zn.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(jax.grad(summed_cross_entropy)(z, y), softmax - np.eye(3)[np.asarray(y)], atol=1e-15)
