"""rsojax.xla_flags: the recommended flags join the user's, and never override them."""

from rsojax import xla_flags


def test_adds_the_recommended_flags_to_the_users():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    out = xla_flags.use_recommended(env)
    assert out == env["XLA_FLAGS"]
    assert out.split() == ["--xla_dump_to=/tmp/x", *(f"--{k}={v}" for k, v in xla_flags.RECOMMENDED.items())]
    assert xla_flags.use_recommended(env) == out  # once only


def test_a_flag_the_user_sets_wins():
    env = {"XLA_FLAGS": "--xla_gpu_force_conv_nchw=false"}
    assert xla_flags.use_recommended(env) == "--xla_gpu_force_conv_nchw=false"
    assert xla_flags.use_recommended({}) == "--xla_gpu_force_conv_nchw=true"
