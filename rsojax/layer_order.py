"""Which weight RSO visits when (Tripathi & Singh, arXiv 2005.05955, Algorithm 1).

Layers are visited in the order the caller states (for a `Sequential` model: last stage
first, see `Sequential.search_order`), never in the sorted order of pytree keys. Inside a
parameter array, weights are visited as the reference code does: for a kernel whose last
axis is the output (Flax's layout: conv HWIO, dense IO) by output channel, then input
channel, then the spatial axes in order; a vector in order.
"""

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np


def visit_axes(ndim: int, output_first: bool = True) -> tuple[int, ...]:
    """The axes of a parameter array from the slowest to the fastest visited."""
    if ndim < 2:
        return tuple(range(ndim))
    out, inp = ndim - 1, ndim - 2
    outer = (out, inp) if output_first else (inp, out)
    return (*outer, *range(ndim - 2))


def weight_order(shape: tuple[int, ...], output_first: bool = True) -> np.ndarray:
    """Row-major flat indices of a parameter array in the order RSO visits them.

    Args:
      shape: the array's shape (a kernel's last axis is its outputs).
      output_first: visit a kernel by output channel, then input channel (the reference
        code's); else by input channel first.

    Returns:
      int32[prod(shape)]: entry i is the flat index of the i-th weight visited.
    """
    size = int(np.prod(shape, dtype=np.int64))
    flat = np.arange(size, dtype=np.int32).reshape(shape)
    return flat.transpose(visit_axes(len(shape), output_first)).ravel()


def get_leaf(params: Mapping, path: str):
    """The array at a path of a nested dict of parameters.

    Args:
      params: the nested dict.
      path: keys joined by "/", such as `"stages_3/Conv_0/kernel"`.

    Returns:
      The array at `path`.
    """
    node = params
    for part in path.split("/"):
        node = node[part]
    return node


def set_leaf(params: Mapping, path: str, value) -> dict:
    """A copy of a nested dict of parameters with the array at `path` replaced.

    Args:
      params: the nested dict; it is not modified.
      path: keys joined by "/", such as `"stages_3/Conv_0/kernel"`.
      value: the new array.

    Returns:
      A new nested dict sharing every other array with `params`.
    """
    head, _, rest = path.partition("/")
    new = dict(params)
    new[head] = set_leaf(params[head], rest, value) if rest else value
    return new


def leaf_paths(params: Mapping, prefix: str = "") -> list[str]:
    """Every array path of a nested dict, in the dict's own order (for messages only)."""
    paths = []
    for name, node in params.items():
        path = f"{prefix}{name}"
        paths += leaf_paths(node, path + "/") if isinstance(node, Mapping) else [path]
    return paths


def check_layers(params: Mapping, layers: Sequence[str]) -> tuple[str, ...]:
    """Validates a list of layer paths against the parameters; returns it as a tuple."""
    if isinstance(layers, str):
        raise TypeError(f"layers: expected a list of parameter paths, got the string {layers!r}")
    layers = tuple(layers)
    if not layers:
        raise ValueError("layers: the list of layers to search is empty")
    known = leaf_paths(params)
    for path in layers:
        if path not in known:
            raise ValueError(f"layers: unknown layer {path!r}; the parameters have {known}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers: a layer is listed twice in {list(layers)}")
    for path in layers:
        dtype = jnp.asarray(get_leaf(params, path)).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"params: layer {path!r} has dtype {dtype}; RSO searches floating-point parameters")
    return layers
