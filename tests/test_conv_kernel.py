"""The Pallas convolution (`rsojax.conv_kernel`) in interpret mode against literal float64
references, its lowering to Triton for a GPU (no GPU needed to lower), and the `conv` switch
from the model to RSO's decisions and the experiment's settings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import runs_batched_as_on_gpus

import rsojax
from rsojax.conv_kernel import conv3x3, conv3x3_pallas, conv3x3_single, conv3x3_xla
from rsojax.evaluators import Incremental
from rsojax.experiment import ExperimentConfig, UsageError, build_model, parse_flags
from rsojax.models import ConvBlock, PoolHead, Sequential


def literal_conv(x_BxHxWxC, k_3x3xCxO):
    """The 3x3 convolution (padding 1) as 9 shifted products, in float64 numpy."""
    x, k = np.asarray(x_BxHxWxC, np.float64), np.asarray(k_3x3xCxO, np.float64)
    _, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(xp[:, a : a + h, b : b + w] @ k[a, b] for a in range(3) for b in range(3))


def inputs(shape, c_out, dtype, seed=0, offset=0.0):
    """Random x (B, H, W, C) with a mean `offset` (so that a one-pass variance would cancel) and
    kernel, drawn by numpy (an eager jax.random draw compiles per shape)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) + offset
    return jnp.asarray(x, dtype), jnp.asarray(rng.standard_normal((3, 3, shape[-1], c_out)) / 12, dtype)


# Every stage of both networks: MNIST's 28, 14 and 7 pixels at 16 channels, CIFAR-10's 32, 16 and 8
# at 16 and 32; odd batches; tiles that straddle images and leave a remainder (B (H+2)(W+2) rows
# are not a multiple of block_rows in any case).
SHAPES = [
    ((3, 28, 28, 16), 16, 128),
    ((3, 14, 14, 16), 16, 512),
    ((5, 7, 7, 16), 16, 32),
    ((1, 32, 32, 16), 16, 128),
    ((3, 16, 16, 16), 32, 64),
    ((5, 8, 8, 32), 32, 32),
]


@pytest.mark.parametrize("shape, c_out, block_rows", SHAPES)
def test_kernel_and_statistics_against_float64_reference(shape, c_out, block_rows):
    x, k = inputs(shape, c_out, jnp.float64, offset=3.0)
    y, mean, var = conv3x3_pallas(x, k, block_rows=block_rows)
    ref = literal_conv(x, k)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(np.asarray(y), ref, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(np.asarray(mean), ref.mean((0, 1, 2)), rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(np.asarray(var), ref.var((0, 1, 2)), rtol=1e-12)


@pytest.mark.parametrize("shape, c_out, block_rows", [SHAPES[0], SHAPES[-1]])
def test_kernel_float32_agrees_with_xla(shape, c_out, block_rows):
    """Float32 to a few rounding errors of XLA's float32 convolution, and its statistics to BN's
    two-pass ones, on inputs whose mean is large against their spread."""
    x, k = inputs(shape, c_out, jnp.float32, offset=3.0)
    y, mean, var = conv3x3_pallas(x, k, block_rows=block_rows)
    ref = np.asarray(conv3x3_xla(x, k), np.float64)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(np.asarray(y), ref, rtol=0, atol=2e-6 * scale)
    exact = literal_conv(x, k)
    np.testing.assert_allclose(np.asarray(mean), exact.mean((0, 1, 2)), rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(np.asarray(var), exact.var((0, 1, 2)), rtol=2e-5)


@pytest.mark.parametrize("conv", ["xla", "pallas"])
@pytest.mark.parametrize("shape", [(3, 14, 14, 16), (2, 7, 9, 16)])
def test_pooled_convolution_is_the_conv_then_the_pool(conv, shape):
    """`pool=True`: the 3x3 conv, then the 2x2 average pool that drops an odd last row or column
    (float64); on XLA one 4x4 correlation with stride 2, on the kernel its conv then the pool."""
    x, k = inputs(shape, 16, jnp.float64)
    y, stats = conv3x3(x, k, conv, pool=True)
    b, h, w, _ = shape
    full = literal_conv(x, k)[:, : h // 2 * 2, : w // 2 * 2]
    ref = full.reshape(b, h // 2, 2, w // 2, 2, 16).mean((2, 4))
    assert stats is None  # BN takes its statistics of the pooled values
    np.testing.assert_allclose(np.asarray(y), ref, rtol=0, atol=1e-13 * np.abs(ref).max())


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("shape", [(2, 7, 9, 1), (2, 6, 5, 3)])
def test_first_conv_is_the_literal_conv(shape, pool):
    """A network's first conv (1 or 3 input channels: shifted multiply-adds, channel by channel)
    and the one-channel form with taps (3, 3, O) or (3, 3) (`Incremental`'s folds and changes)
    are the literal conv, pooled or not, on odd sizes too (float64)."""
    x, k = inputs(shape, 4, jnp.float64)
    b, h, w, _ = shape
    ref = literal_conv(x, k)
    if pool:
        ref = ref[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, 4).mean((2, 4))
    tol = 1e-13 * np.abs(ref).max()
    np.testing.assert_allclose(np.asarray(conv3x3_xla(x, k, pool)), ref, rtol=0, atol=tol)
    if shape[-1] == 1:
        np.testing.assert_allclose(np.asarray(conv3x3_single(x[..., 0], k[:, :, 0], pool)), ref, rtol=0, atol=tol)
        one = conv3x3_single(x[..., 0], k[:, :, 0, 1], pool)
        np.testing.assert_allclose(np.asarray(one), ref[..., 1], rtol=0, atol=tol)


def test_candidates_on_the_grid():
    """Under vmap (a weight's three candidates, each with its own kernel) each candidate gets
    its own convolution and statistics."""
    x, k = inputs((3, 3, 7, 7, 16), 16, jnp.float64)
    k3 = jnp.stack([k, -k, 2 * k])
    y, mean, var = jax.vmap(functools.partial(conv3x3_pallas, block_rows=32))(x, k3)
    for i in range(3):
        ref = literal_conv(x[i], k3[i])
        np.testing.assert_allclose(np.asarray(y[i]), ref, rtol=0, atol=1e-13 * np.abs(ref).max())
        np.testing.assert_allclose(np.asarray(var[i]), ref.var((0, 1, 2)), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(mean[i]), ref.mean((0, 1, 2)), rtol=0, atol=1e-13 * np.abs(ref).max())


def test_dots_are_ieee_float32():
    """Triton lowers a dot of precision DEFAULT or HIGH to TF32: the kernel's are HIGHEST (IEEE).
    A CPU computes float32 exactly either way, so the kernel's program is what is checked."""
    x, k = inputs((1, 7, 7, 16), 16, jnp.float32)
    jaxpr = str(jax.make_jaxpr(functools.partial(conv3x3_pallas, interpret=False))(x, k))
    assert jaxpr.count("dot_general[") == 9
    assert jaxpr.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == 9


def test_lowers_to_triton_with_candidates_on_the_grid():
    """The kernel lowers for a GPU through Triton (its tiles are powers of two), one program
    per tile and candidate. Lowering needs no GPU; compiling and running it does."""
    x = jax.ShapeDtypeStruct((3, 3, 16, 16, 16), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, 16, 32), jnp.float32)
    f = jax.jit(jax.vmap(functools.partial(conv3x3_pallas, interpret=False), in_axes=(0, None)))
    text = f.trace(x, k).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 1
    tiles = -(-3 * 18 * 18 // 128)
    assert f"grid_x = {tiles} : i32, grid_y = 3 : i32" in text


def test_bad_shapes_raise():
    x, k = inputs((2, 7, 7, 16), 16, jnp.float32)
    with pytest.raises(ValueError, match="kernel_3x3xCxO"):
        conv3x3_pallas(x, k[:, :, :8])
    with pytest.raises(ValueError, match="block_rows"):
        conv3x3_pallas(x, k, block_rows=100)


def init(model, x, dtype=jnp.float64, seed=0):
    """Parameters of the model's shapes, He-normal kernels and BN's ones and zeros, drawn by
    numpy (compiling the model's own init takes the suite tens of seconds per network)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2 / np.prod(s.shape[:-1])), dtype)
        return jnp.full(s.shape, 1.0 if name == "scale" else 0.0, dtype)

    shapes = jax.eval_shape(functools.partial(model.init, train=True), jax.random.key(0), x[:1])["params"]
    return jax.tree_util.tree_map_with_path(draw, shapes)


def tiny_net(conv):
    """Conv stages of 16 channels on 8x8 inputs: the kernel serves all but none of the first
    conv's shapes (16 input channels here); a pool after stage 1; two stages after it."""
    blocks = (ConvBlock(16, relu_in=False, conv=conv), ConvBlock(16, pool=True, conv=conv), ConvBlock(16, conv=conv),
              ConvBlock(16, conv=conv))
    return Sequential(stages=(*blocks, PoolHead()), input_shape=(8, 8, 16))


def test_model_takes_the_kernel_statistics_where_nothing_comes_between():
    """BN after a conv with nothing between them takes the kernel's statistics; after a pool,
    its own of the pooled values (float32, where the two differ in rounding)."""
    model = tiny_net("pallas")
    params = init(model, jnp.zeros((1, 8, 8, 16)), jnp.float32)

    def stats(stage, h):
        apply = jax.jit(functools.partial(model.apply, train=True, start=stage, stop=stage + 1, mutable=["batch_stats"]))
        return apply({"params": params}, h)[1]["batch_stats"][f"stages_{stage}"]["BatchNorm_0"]

    h, k = inputs((5, 4, 4, 16), 16, jnp.float32, offset=1.0)[0], params["stages_2"]["Conv_0"]["kernel"]
    _, mean, var = conv3x3_pallas(jax.nn.relu(h), k)
    two_pass = jnp.square(conv3x3_xla(jax.nn.relu(h), k) - mean).mean((0, 1, 2))
    assert not np.array_equal(var, two_pass)  # else the check below could not tell the two apart
    got = stats(2, h)
    np.testing.assert_array_equal(got["mean"], mean)
    np.testing.assert_array_equal(got["var"], var)
    g = inputs((5, 8, 8, 16), 16, jnp.float32, seed=1, offset=1.0)[0]
    pooled = rsojax.models.avg_pool_2x2(conv3x3_xla(jax.nn.relu(g), params["stages_1"]["Conv_0"]["kernel"]))
    got = stats(1, g)
    np.testing.assert_allclose(got["mean"], pooled.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["var"], pooled.var((0, 1, 2)), rtol=1e-5)


def test_residual_network_computes_the_same_function():
    """Every stage of the CIFAR-10 network, its first conv (3 input channels, left to XLA),
    pools, residual additions and shortcuts included, in float64: the same outputs and
    statistics on either backend."""
    xla, pallas = rsojax.cifar10_resnet(), rsojax.cifar10_resnet(conv="pallas")
    x = inputs((2, *xla.input_shape), 1, jnp.float64)[0]
    params = init(xla, x)
    out_xla, stats_xla = jax.jit(functools.partial(xla.apply, train=True, mutable=["batch_stats"]))({"params": params}, x)
    out_pallas, stats_pallas = jax.jit(functools.partial(pallas.apply, train=True, mutable=["batch_stats"]))({"params": params}, x)
    np.testing.assert_allclose(out_pallas, out_xla, rtol=1e-10, atol=1e-10)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-10, atol=1e-12), stats_pallas, stats_xla)


def test_rso_takes_the_same_decisions():
    """A sweep of a first-stage kernel with `Incremental` (its candidates run the model from
    stage 2 on, through the kernel), float64: the same parameters and metrics as with XLA."""
    x = inputs((24, 8, 8, 16), 1, jnp.float64)[0]
    y = jnp.asarray(np.random.default_rng(1).integers(0, 10, 24))
    params = init(tiny_net("xla"), x)
    path = "stages_0/Conv_0/kernel"
    results = []
    for conv in ("xla", "pallas"):
        rso = rsojax.RSO(Incremental(tiny_net(conv)), [path], rsojax.RSOConfig(batch_size=8, sigma_scale=4.0))
        state = rso.init(params, jax.random.key(3), (x, y))
        results.append(rso.sweep(state, rso.prepare(state, (x, y), path), path, 0, 12))
    (state_xla, m_xla, _), (state_pallas, m_pallas, _) = results
    assert int(m_xla.accepted) > 0  # decisions to agree on
    np.testing.assert_array_equal(rsojax.get_leaf(state_pallas.params, path), rsojax.get_leaf(state_xla.params, path))
    assert int(m_pallas.accepted) == int(m_xla.accepted)
    np.testing.assert_allclose(float(m_pallas.loss_after), float(m_xla.loss_after), rtol=1e-12)


def test_runs_batched_through_the_kernel_decide_as_alone():
    """Two runs batched as on a GPU, so that the kernel is mapped over the runs and over the
    candidates, float64: each run ends with the parameters of its XLA single run."""
    x = inputs((24, 8, 8, 16), 1, jnp.float64)[0]
    y = jnp.asarray(np.random.default_rng(1).integers(0, 10, 24))
    params = [init(tiny_net("xla"), x, seed=s) for s in (0, 1)]
    path, config = "stages_0/Conv_0/kernel", rsojax.RSOConfig(batch_size=8, sigma_scale=4.0)
    with runs_batched_as_on_gpus():
        runs = rsojax.RSO(Incremental(tiny_net("pallas")), [path], config)
        state = runs.init_runs(jax.tree.map(lambda *a: jnp.stack(a), *params), jnp.stack([jax.random.key(3), jax.random.key(4)]), (x, y))
        state, metrics, _ = runs.sweep(state, runs.prepare(state, (x, y), path), path, 0, 12)
    alone = rsojax.RSO(Incremental(tiny_net("xla")), [path], config)
    for k, seed in enumerate((3, 4)):
        want = alone.init(params[k], jax.random.key(seed), (x, y))
        want, want_metrics, _ = alone.sweep(want, alone.prepare(want, (x, y), path), path, 0, 12)
        assert int(want_metrics.accepted) > 0 and int(metrics.accepted[k]) == int(want_metrics.accepted)
        np.testing.assert_allclose(rsojax.get_leaf(state.params, path)[k], rsojax.get_leaf(want.params, path), rtol=1e-12, atol=0)


def test_switch_settings():
    assert rsojax.mnist_convnet(conv="auto").stages[1].conv == "xla"  # auto: XLA until measured on a GPU
    assert rsojax.cifar10_resnet(conv="pallas").stages[4].conv == "pallas"
    with pytest.raises(ValueError, match="^conv: expected one of"):
        rsojax.mnist_convnet(conv="triton")
    with pytest.raises(ValueError, match="^conv: .*SGD"):
        ExperimentConfig(optimizer="sgd", conv="pallas")
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="^conv: the Pallas kernel runs on GPUs only"):
            build_model(ExperimentConfig(conv="pallas"))
    config, _ = parse_flags(["--workdir", "w", "--conv", "auto"])
    assert config.conv == "auto"
    with pytest.raises(UsageError, match="^--conv: the SGD baseline"):
        parse_flags(["--workdir", "w", "--conv", "pallas", "--optimizer", "sgd"])


def test_xla_backend_is_flax_conv():
    """The XLA path computes what `flax.linen.Conv` did: same parameters, same values (a
    network's first conv, of fewer channels, to rounding: `test_first_conv_is_the_literal_conv`)."""
    import flax.linen as nn

    from rsojax.models import Conv3x3, he_normal

    x = inputs((2, 5, 5, 4), 1, jnp.float64)[0]
    conv = nn.Conv(4, (3, 3), padding=1, use_bias=False, kernel_init=he_normal)
    ours = Conv3x3(4)
    p_flax, p_ours = conv.init(jax.random.key(0), x), ours.init(jax.random.key(0), x)
    np.testing.assert_array_equal(p_ours["params"]["kernel"], p_flax["params"]["kernel"])
    y, stats = ours.apply(p_ours, x)
    assert stats is None
    np.testing.assert_array_equal(y, conv.apply(p_flax, x))
