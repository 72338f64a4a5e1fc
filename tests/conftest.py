"""Shared fixtures. The suite runs in float64 (the references are float64); float32 tests
cast explicitly.

The suite's many small runs compile the same programs again and again (every `RSO` jits its
own sweeps; every command line is a new process): one persistent compilation cache per
session, shared through the environment with the subprocesses and with the pytest-xdist
workers (which the main process starts after it has read this file), compiles each once.
"""

import atexit
import os
import shutil
import tempfile

_CACHE = os.environ.get("RSOJAX_TESTS_JAX_CACHE")
if _CACHE is None:  # the main pytest process: it makes the cache and removes it at exit
    _CACHE = tempfile.mkdtemp(prefix="rsojax-tests-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ |= {
    "RSOJAX_TESTS_JAX_CACHE": _CACHE,
    "JAX_COMPILATION_CACHE_DIR": _CACHE,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}

import jax  # noqa: E402

# The suite is mostly XLA:CPU compiling small programs that then run for milliseconds, so it
# asks XLA to compile for less time: LLVM's optimization level 1 instead of 3 (a third less
# compile time; the convolutions and dots are library calls, which it does not change) and
# XLA:CPU's older loop emitters, which compile faster than its fusion emitters.
# Tests compare results computed under the same flags, or with float64 references at a
# tolerance, so the flags do not decide them. A flag the user set in XLA_FLAGS is left alone;
# an unknown flag aborts the process, so the emitters' flag is set only for the jax versions
# known to have it.
_FAST_COMPILE = {"xla_backend_optimization_level": "1"}
if (0, 10) <= jax.__version_info__[:2] < (0, 11):
    _FAST_COMPILE["xla_cpu_use_fusion_emitters"] = "false"
_FLAGS = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_FLAGS, *(f"--{k}={v}" for k, v in _FAST_COMPILE.items() if k not in _FLAGS)]).strip()

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", _CACHE)  # in case jax was imported before this file
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import contextlib  # noqa: E402
import fcntl  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import rsojax  # noqa: E402
from rsojax.records import read_records  # noqa: E402
from rsojax.train import INIT_SEED  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The modules that take longest (`--durations`, summed per module), slowest first. The two
# pytest-xdist workers take whole modules in collection order (pyproject's addopts), so these
# start first and the many short modules fill in at the end; the others keep their order.
SLOWEST_MODULES = (
    "test_resnet.py",
    "test_authors_oracle.py",
    "test_experiment_runs.py",
    "test_gpu_check.py",
    "test_runs.py",
    "test_experiments.py",
    "test_rso.py",
    "test_evaluators.py",
    "test_distributed.py",
    "test_long_runs.py",
    "test_cifar10.py",
    "test_notebook.py",
)


def pytest_collection_modifyitems(items):
    """The tests of `SLOWEST_MODULES` first, in that order (a stable sort)."""
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def random_data(n, example_shape, key=0, dtype=jnp.float64):
    kx, ky = jax.random.split(jax.random.key(key))
    x = jax.random.normal(kx, (n, *example_shape), dtype)
    y = jax.random.randint(ky, (n,), 0, 10)
    return x, y


def init_params(model, x, seed=INIT_SEED, dtype=jnp.float64):
    params = model.init(jax.random.key(seed), x[:2], train=True)["params"]
    return jax.tree.map(lambda a: a.astype(dtype), params)


@pytest.fixture
def small_convnet():
    """The paper's MNIST network with 3 channels instead of 16: same structure, small."""
    model = rsojax.mnist_convnet(channels=3)
    x, y = random_data(48, model.input_shape)
    return model, init_params(model, x), (x, y)


@pytest.fixture
def small_mlp():
    model = rsojax.mlp(hidden=(6,), input_shape=(5,))
    x, y = random_data(40, model.input_shape)
    return model, init_params(model, x), (x, y)


@contextlib.contextmanager
def runs_batched_as_on_gpus():
    """Several runs batched by `jax.vmap` as on GPUs and TPUs, where CPUs compute them one at a
    time (`rsojax.runs`). jax's trace caches are cleared on the way in and out: the jitted
    caching passes are module functions, which would keep the program traced the other way."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rsojax.runs, "one_at_a_time_on_cpu", lambda: False)
        jax.clear_caches()
        try:
            yield
        finally:
            jax.clear_caches()


@contextlib.contextmanager
def mock_tfds(data_dir, name, n=96):
    """TFDS `name` replaced by `tfds.testing.mock_data` (random images, the real metadata).

    With `batch_size=-1` the mock reads the split sizes from the data directory, so this
    writes the dataset's dataset_info.json and features.json (from TFDS's own builder) there.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(
        tfds.core.SplitDict([tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s in ("train", "test")])
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir):
        yield


@pytest.fixture
def mock_mnist(tmp_path):
    """Mock MNIST (`mock_tfds`), 96 images per split; yields the data directory."""
    with mock_tfds(str(tmp_path), "mnist"):
        yield str(tmp_path)


@pytest.fixture
def mock_cifar10(tmp_path):
    """Mock CIFAR-10 (`mock_tfds`), 96 images per split; yields the data directory."""
    with mock_tfds(str(tmp_path), "cifar10"):
        yield str(tmp_path)


def script(name: str):
    """experiments/<name>.py as a module (the scripts are not a package: no sys.path edits)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mnist_like(n=96, seed=0):
    """uint8 N x 28 x 28 images (Keras' mnist.npz layout) that carry their label, and the labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
    x[np.arange(n), 2 * y, 5:20] = 255
    return x, y


def write_npz(path, n=96, **arrays):
    """An .npz file of `mnist_like` train and test splits, with `arrays` replacing some."""
    x, y = mnist_like(n)
    xt, yt = mnist_like(n, seed=1)
    np.savez(path, **({"x_train": x, "y_train": y, "x_test": xt, "y_test": yt} | arrays))
    return str(path)


def once_per_session(tmp_path_factory, name: str, make) -> str:
    """`make(folder)` for the whole session: the first pytest-xdist worker that asks runs it,
    in a folder that every worker shares; the others wait for it to finish and share the
    folder. A folder that a failed `make` left half-written is made again."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: <session>/popen-gwN
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".done").touch()
    return str(folder)


@pytest.fixture(scope="session")
def mnist_npz(tmp_path_factory):
    """A small MNIST-like .npz file, 96 images per split (one file for all workers)."""
    return os.path.join(once_per_session(tmp_path_factory, "data", lambda d: write_npz(d / "mnist.npz")), "mnist.npz")


# The command-line runs of the tests: 2 cycles (or epochs) on 64 images, 2 channels.
TINY = ["--cycles", "2", "--train_subset", "64", "--channels", "2", "--kernels_only", "--chunk_size", "8"]


def tiny_argv(data, workdir, optimizer="rso", *more):
    return [*TINY, "--data", data, "--optimizer", optimizer, "--batch_size", "16", "--workdir", str(workdir), *more]


@pytest.fixture(scope="session")
def compared(mnist_npz, tmp_path_factory):
    """experiments/compare.py on `mnist_npz`: RSO and SGD, the runs that the tests of the command
    lines read and compare resumed runs with, with TensorBoard event files; returns its workdir
    (one run for all workers: the tests only read it, or check that a command leaves it as it is)."""

    def run(workdir):
        script("compare").main([*TINY[:2], "--train_subset", "64", "--rso_batch_size", "16", "--sgd_batch_size", "16",
                                *TINY[4:], "--data", mnist_npz, "--workdir", str(workdir), "--tensorboard"])

    return once_per_session(tmp_path_factory, "compare", run)


def comparable(workdir):
    """What a resumed run must share with an uninterrupted one: the parameters and the records
    but their wall time."""
    records = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in read_records(workdir)]
    return json.load(open(os.path.join(workdir, "summary.json")))["params_sha256"], records



def execute_notebook(name: str) -> str:
    """Runs notebooks/<name> top to bottom with the kernel in notebooks/, as a user runs it (an
    error in a cell fails the test); checks that it plotted; returns its text outputs."""
    import nbformat
    from nbclient import NotebookClient

    notebooks = os.path.join(ROOT, "notebooks")
    nb = nbformat.read(os.path.join(notebooks, name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": notebooks}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot
    return "".join(o.get("text", "") for o in outputs)


def mnist_dir() -> str:
    """The TFDS data directory of the real MNIST (the quickstart's), relative to the repository
    as the README sets it.

    A directory someone named (`TFDS_DATA_DIR`, which .ci/run always sets) or a CI run (`CI`)
    must hold MNIST: its absence fails the test instead of skipping it unnoticed. Only the
    default `../shared` of a clone elsewhere may be absent: an explicit skip, listed by `-ra`.
    """
    data_dir = os.environ.get("TFDS_DATA_DIR", os.path.join("..", "shared", "tensorflow_datasets"))
    path = os.path.join(ROOT, data_dir)
    if not os.path.isdir(os.path.join(path, "mnist")):
        message = f"no TFDS MNIST in {path}: set TFDS_DATA_DIR (relative to the repository) to a folder holding mnist/"
        if "TFDS_DATA_DIR" in os.environ or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return data_dir
