"""How much memory RSO's runs need, known before any work: the evaluator's contexts.

What grows with the training set and with the number of runs is the evaluator's context
(`Cached` and `Incremental` cache every stage's input over the training set; `Incremental`
also the searched stage's convolution output): a run's parameters and the sweep's
temporaries, which grow with the batch, are small beside it at the sizes where memory runs
out. The contexts' shapes are traced (`jax.eval_shape`), not computed, for every layer; the
largest decides. Where several runs share a part (the training set), it is counted once.
"""

import os

import jax
import numpy as np

from rsojax.rso import RSO, RSOState, RunsContext


def context_bytes(rso: RSO, state: RSOState, data) -> tuple[int, int]:
    """The bytes of the evaluator's largest context over the layers.

    Args:
      rso: the trainer.
      state: its state, of one run or several (only shapes are read).
      data: the training set `(x, y)`.

    Returns:
      `(shared, per_run)`: the bytes every run shares (the training set, where the evaluator
      says so through `prepare_runs`) and those each run adds, for the layer where
      `shared + per_run` is largest.
    """
    def abstract(runs: tuple):  # the parameters' shapes with `runs` as their leading axes
        skip = 0 if state.runs is None else 1
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((*runs, *a.shape[skip:]), a.dtype), state.params)

    evaluator, best = rso.evaluator, (0, 0)
    for path in rso.layers:
        if hasattr(evaluator, "prepare_runs"):
            axes = []  # the axes, known once the context is traced

            def prepare(params, path=path, axes=axes):
                ctx, ctx_axes = evaluator.prepare_runs(params, path, data)
                axes.append(ctx_axes)
                return ctx

            ctx = RunsContext.of(jax.eval_shape(prepare, abstract((1,))), axes[0])
            shared, per_run = _sum_bytes(ctx.shared), _sum_bytes(ctx.batched)
        else:
            shared, per_run = 0, _sum_bytes(jax.eval_shape(lambda p, path=path: evaluator.prepare(p, path, data), abstract(())))
        best = max(best, (shared, per_run), key=sum)
    return best


def _nbytes(a) -> int:
    return int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize


def _sum_bytes(tree) -> int:
    return sum(_nbytes(a) for a in jax.tree.leaves(tree))


def available_bytes(device=None) -> int | None:
    """The memory a device can give: its allocator's limit on an accelerator, the memory the
    system has available on a CPU; None where it cannot be known.

    Args:
      device: a `jax.Device` (default: the first).

    Returns:
      Bytes, or None.
    """
    device = device or jax.devices()[0]
    if device.platform != "cpu":
        return (device.memory_stats() or {}).get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return pages * os.sysconf("SC_PAGE_SIZE") if pages else None


def check_fits(rso: RSO, state: RSOState, data, what: str = "runs") -> None:
    """Refuses, before any work, runs whose contexts will not fit in the device's memory.

    Args:
      rso: the trainer.
      state: its state, of one run or several.
      data: the training set `(x, y)`.
      what: the name of the setting to lower, in the message.

    Raises:
      ValueError: the largest context of `state.runs` runs (and the training set, kept once
        more as the data) exceeds what the device can give, with what would fit.
    """
    available = available_bytes()
    if available is None:
        return
    runs = state.runs or 1
    shared, per_run = context_bytes(rso, state, data)
    data_bytes = _sum_bytes(data)
    need = data_bytes + shared + runs * per_run
    if need > available:
        fit = max(int((available - data_bytes - shared) // max(per_run, 1)), 0)
        gb = 2**30
        raise ValueError(
            f"{what}: {runs} run(s) need about {need / gb:.1f} GB for their caches ({per_run / gb:.2f} GB per run, "
            f"{(shared + data_bytes) / gb:.2f} GB shared) but the device has {available / gb:.1f} GB: "
            f"{fit} run(s) fit; or use fewer training images"
        )
