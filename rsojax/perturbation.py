"""The distribution of RSO's perturbation dw (Tripathi & Singh, arXiv 2005.05955, Section 3).

The paper draws dw ~ N(0, sigma_d) and names two alternatives: U(-2 sigma_d, 2 sigma_d) and
the three values {-sigma_d, 0, +sigma_d} (equally likely). Each is a unit draw scaled by
sigma_d; `RSOConfig.perturbation` selects one by its key in `PERTURBATIONS`.
"""

from collections.abc import Callable

import jax

# name -> unit draw (key, dtype) -> scalar; dw = sigma_d * draw.
PERTURBATIONS: dict[str, Callable] = {
    "normal": lambda key, dtype: jax.random.normal(key, (), dtype),
    "uniform": lambda key, dtype: jax.random.uniform(key, (), dtype, -2.0, 2.0),
    "ternary": lambda key, dtype: jax.random.randint(key, (), -1, 2).astype(dtype),
}
