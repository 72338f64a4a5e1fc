"""Data parallelism for RSO and SGD with `jax.sharding`: a mesh axis 'data' over the
devices of every process, and for several RSO runs at once (`RSO.init_runs`) an axis 'runs'
beside it.

Each candidate evaluation is data-parallel over its minibatch: the sampled batch indices are
constrained to be sharded along 'data' (`shard_batch`), while parameters, optimizer state
and the training data are replicated (`replicate`). GSPMD then partitions the
forward passes of the three candidates over the devices and inserts the all-reduces of the
BN batch statistics and of the summed loss, so every device takes the decision one device
would take (up to the order of the floating-point sums). The same holds for an SGD step: the
batch is sharded, the gradient is all-reduced.

The training data is replicated: every device gathers its share of a fresh minibatch from its
own copy, with no host round-trip per weight (MNIST is 188 MB in float32). Whole-training-set
caches of the evaluators (`Cached`, `Incremental`) are replicated too, and are computed by
every device; see the README for data that does not fit on one device.

Several runs: with a 'runs' axis of r devices, each run's state and caches live on the
devices of its slice of that axis (K runs, K/r per slice), and its minibatches are split over
the 'data' axis within the slice; the runs never communicate.

Several hosts: `distributed_init` (`jax.distributed.initialize`) before anything else touches
the devices, then `make_mesh` spans the devices of every process, and every process runs the
same program on the same inputs. What only one process reads (a checkpoint) reaches the others
through `broadcast_tree` and `broadcast_json`; what each process knows (a signal it received)
reaches all of them through `process_values`.
"""

import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
RUNS = "runs"


def distributed_init(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None):
    """Joins this process to a multi-process JAX program (`jax.distributed.initialize`).

    Arguments left None come from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID` in the environment, else from JAX's cluster detection (Slurm, Open MPI,
    Kubernetes, TPU pods).
    """
    env = os.environ
    num_processes = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    jax.distributed.initialize(
        coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"),
        None if num_processes is None else int(num_processes),
        None if process_id is None else int(process_id),
    )


def make_mesh(n_devices: int = 0, runs: int = 1) -> Mesh:
    """A mesh over the first `n_devices` of `jax.devices()` (0: all of them, across all
    processes): one axis, 'data', or with `runs` > 1 the axes ('runs', 'data') of shape
    (runs, n_devices / runs). With several processes every process must take part: all devices.
    """
    total = jax.device_count()
    if not isinstance(n_devices, int) or not 0 <= n_devices <= total:
        raise ValueError(f"n_devices: expected 0 (all) to {total} (the devices available), got {n_devices!r}")
    n = n_devices or total
    if jax.process_count() > 1 and n != total:
        raise ValueError(
            f"n_devices: with {jax.process_count()} processes the mesh spans all {total} devices, got {n_devices}"
        )
    if not isinstance(runs, int) or runs < 1 or n % runs:
        raise ValueError(f"runs: expected a number of device groups that divides the {n} devices, got {runs!r}")
    if runs == 1:
        return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])
    return jax.make_mesh((runs, n // runs), (RUNS, DATA), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[:n])


def describe(mesh: Mesh | None) -> dict:
    """`n_devices` and `n_processes` taking part (1 and 1 without a mesh)."""
    if mesh is None:
        return {"n_devices": 1, "n_processes": 1}
    return {"n_devices": mesh.size, "n_processes": len({d.process_index for d in mesh.devices.flat})}


def data_size(mesh: Mesh | None) -> int:
    """The devices one minibatch is split over: the size of the mesh's 'data' axis."""
    return 1 if mesh is None else mesh.shape[DATA]


def run_groups(mesh: Mesh | None) -> int:
    """The device groups the runs are spread over: the size of the mesh's 'runs' axis (1 without one)."""
    return 1 if mesh is None or RUNS not in mesh.axis_names else mesh.shape[RUNS]


def check_batch(batch_size: int, mesh: Mesh | None):
    """The batch must split evenly over the mesh's 'data' axis."""
    n = data_size(mesh)
    if batch_size % n:
        raise ValueError(
            f"batch_size: {batch_size} does not divide over {n} devices; "
            f"use a multiple of {n} (for example {batch_size - batch_size % n or n})"
        )


def _is_key(a) -> bool:
    return isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array with a full copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh: Mesh | None):
    """Every leaf of `tree` replicated on the mesh's devices (`tree` itself without a mesh).

    Leaves may be host arrays, arrays of one process's devices or typed PRNG keys; with several
    processes every process must pass the same values.
    """
    return tree if mesh is None else _place(tree, replicated(mesh))


def _place(tree, sharding: NamedSharding):
    def put(a):
        if _is_key(a):  # device_put cannot place keys on other processes' devices: move their data
            return jax.random.wrap_key_data(put(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        if isinstance(a, jax.Array) and a.sharding == sharding:
            return a  # placed already (an equivalent but other sharding is placed anew: jit's cache keys on it)
        return jax.device_put(np.asarray(a) if jax.process_count() > 1 else a, sharding)

    return jax.tree.map(put, tree)


def by_runs(mesh: Mesh) -> NamedSharding:
    """The sharding of an array whose leading axis holds runs: split over the 'runs' axis
    (replicated over 'data'), or replicated on a mesh without one."""
    return NamedSharding(mesh, PartitionSpec(RUNS) if RUNS in mesh.axis_names else PartitionSpec())


def place_runs(tree, mesh: Mesh | None):
    """Every leaf of `tree` (a leading run axis on each) placed by `by_runs` (`tree` itself
    without a mesh). As `replicate`, every process passes the same values."""
    return tree if mesh is None else _place(tree, by_runs(mesh))


def shard_batch(x_B: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Inside jit: `x_B` split along its first (batch) axis over the mesh (`x_B` without a mesh)."""
    if mesh is None:
        return x_B
    return jax.lax.with_sharding_constraint(x_B, NamedSharding(mesh, PartitionSpec(DATA)))


def broadcast_tree(tree):
    """Process 0's `tree` (arrays, typed PRNG keys included) on every process, as host arrays.

    Every process passes a tree of the same structure, shapes and dtypes.
    """
    raw = jax.tree.map(lambda a: np.asarray(jax.random.key_data(a) if _is_key(a) else a), tree)
    raw = multihost_utils.broadcast_one_to_all(raw)
    return jax.tree.map(lambda t, a: jax.random.wrap_key_data(a, impl=jax.random.key_impl(t)) if _is_key(t) else a, tree, raw)


def broadcast_json(obj):
    """Process 0's `obj` (anything `json.dumps` takes) on every process."""
    blob = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int32(blob.size)))
    padded = np.zeros(n, np.uint8)
    padded[: min(n, blob.size)] = blob[:n]
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).decode())


def process_values(value: int) -> list[int]:
    """Every process's `value`, in process order (one small all-gather; none with one process)."""
    if jax.process_count() == 1:
        return [int(value)]
    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value))).ravel()]
