"""XLA flags that rsojax's command lines set for speed, unless the user's XLA_FLAGS sets them.

XLA reads XLA_FLAGS once, when JAX starts its first backend: `use_recommended()` must run
before the first computation (the command lines in `experiments/` call it first thing; in a
notebook, call it before any JAX array is made, or set XLA_FLAGS yourself). Each flag here is
one every jaxlib knows, and backends it does not concern ignore it. None changes what is
computed at the precision asked for (`rsojax.precision`), only how.
"""

import os

RECOMMENDED = {
    # On Hopper GPUs XLA hands cuDNN float32 convolutions in NHWC, and cuDNN's float32
    # kernels run in NCHW, transposing on the way in and out (a fifth of a conv-2 weight's
    # time at batch 5000, in a profile); NCHW throughout saves those transposes (the
    # measurement: docs/gpus.md).
    "xla_gpu_force_conv_nchw": "true",
}


def use_recommended(environ=os.environ) -> str:
    """Adds each of `RECOMMENDED` to XLA_FLAGS in `environ` unless XLA_FLAGS already sets it
    (so `XLA_FLAGS=--xla_gpu_force_conv_nchw=false` opts out); returns the new XLA_FLAGS."""
    flags = environ.get("XLA_FLAGS", "")
    named = {word.lstrip("-").split("=")[0] for word in flags.split()}
    added = [f"--{name}={value}" for name, value in RECOMMENDED.items() if name not in named]
    environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return environ["XLA_FLAGS"]
