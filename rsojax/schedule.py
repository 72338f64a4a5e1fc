"""The perturbation scale sigma_d of each layer and its anneal over cycles.

From the RSO reference code (Tripathi & Singh, arXiv 2005.05955): sigma_d is the analytic
Kaiming std of the layer, sqrt(2 / fan_in) (fan_in = C_in * k * k for a conv), times a scale;
BN gamma and beta (and any other vector parameter) use 0.167 times the scale. At cycle
c = 0..C-1 the std is sigma_d * (a + (1 - a) * (C - c) / C), a linear anneal to just above a.
"""

import math

import jax.numpy as jnp


def layer_sigma(shape: tuple[int, ...], scale: float = 1.0, vector_sigma: float = 0.167) -> float:
    """sigma_d of a parameter array, before the anneal.

    Args:
      shape: the array's shape (a kernel's last axis is its outputs).
      scale: a factor on every layer's sigma.
      vector_sigma: sigma of a vector parameter (BN gamma and beta), before `scale`.

    Returns:
      scale * sqrt(2 / fan_in) for a kernel, scale * vector_sigma for a vector.
    """
    if len(shape) < 2:
        return scale * vector_sigma
    fan_in = math.prod(shape[:-1])
    return scale * math.sqrt(2.0 / fan_in)


def anneal(cycle, cycles: int, floor=0.1, rest=None) -> jnp.ndarray:
    """The factor on sigma_d at a cycle: a linear anneal from 1 to just above `floor`.

    Args:
      cycle: the cycle, 0-based (may be traced).
      cycles: the run's number of cycles.
      floor: the factor's limit at the last cycle (a float, or an array when it is traced).
      rest: 1 - floor, rounded from the exact value; give it with a traced `floor`, so that
        the factor is the one a Python float `floor` gives (None: computed from `floor`).

    Returns:
      floor + (1 - floor) * (cycles - cycle) / cycles.
    """
    rest = 1.0 - floor if rest is None else rest
    return floor + rest * (cycles - jnp.asarray(cycle)) / cycles
