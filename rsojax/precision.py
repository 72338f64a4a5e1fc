"""The arithmetic precision of convolutions and matrix products in RSO's compiled code.

JAX's default precision is the backend's fastest: on NVIDIA GPUs since Ampere it computes
float32 convolutions and matrix products in TF32 (a 10-bit mantissa), on TPUs in one bfloat16
pass. Late in training the gap between RSO's best two candidate losses falls below that
rounding error (measured on an H200: another candidate than float32's for 55 of 256 conv-2
weights after 36 cycles), so a run's decisions would depend on the chip. rsojax therefore
computes candidate losses, the caches they start from and test accuracy in full float32 by
default ("float32", JAX's "highest"), on every backend; "default" opts in to the backend's
own precision. CPUs compute float32 exactly either way, and float64 stays float64. A convolution
of at most 3 input channels (a network's first; `rsojax.conv_kernel.FEW_CHANNELS`) is
elementwise multiply-adds, exact float32 under either setting.
"""

import contextlib

import jax

# name -> the value of `jax.default_matmul_precision` while RSO's code is traced.
PRECISIONS = {
    "float32": "highest",  # full float32 (on a GPU: no TF32; on a TPU: 6 bfloat16 passes)
    "default": "default",  # the backend's default: TF32 on NVIDIA GPUs, 1 bfloat16 pass on TPUs
}


def check_precision(name: str) -> str:
    """Validates a precision name; returns it."""
    if name not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {name!r}")
    return name


def precision_scope(name: str) -> contextlib.AbstractContextManager:
    """A context in which jitted functions are traced (and cached) at precision `name`.

    `jax.default_matmul_precision` is part of jit's cache key, so the same function traced
    under two precisions compiles twice and never mixes them.
    """
    return jax.default_matmul_precision(PRECISIONS[check_precision(name)])
