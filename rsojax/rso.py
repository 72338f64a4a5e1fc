"""RSO, Random Search Optimization (Tripathi & Singh, arXiv 2005.05955, Algorithm 1).

For each cycle c, for each layer d in the stated order, for each weight w_j of the layer in
visit order: take the weight's minibatch and draw dw ~ N(0, sigma_d,c) (or another
distribution of `rsojax.perturbation`); with w' = w * (1 - weight_decay), set w_j to
whichever of w', w' + dw, w' - dw has the lowest loss on the batch. Ties go to the earlier
candidate (so to w'); a non-finite loss is never chosen; if all three are non-finite the
weight keeps its value and the event is counted. Minibatches follow the reference code's
stream (`rsojax.sampling`): one shuffle per block and cycle, cut into fixed batches.

The paper's parallel schemes (a whole layer, or one thread per output neuron, searched against
the layer's starting point) are `RSOConfig.granularity` options, in `rsojax.parallel`.

The engine owns sampling, ordering and acceptance; an evaluator (`rsojax.evaluators`) owns
how the three losses are computed. A layer is swept by one jitted function, a `fori_loop`
over the layer's weights, compiled once per layer and reused across cycles (the cycle and
sigma are traced), at the precision of `RSOConfig.precision` (`rsojax.precision`). Sweeps run
in chunks of weights (`RSO.chunks`): dw is keyed by (cycle, layer, weight position) and the
minibatch by (cycle, block, weight position), so chunks take the same decisions in exact
arithmetic. Each chunk starts from an evaluator context prepared for its own state, which is
what makes a run resumed at a chunk boundary bit-identical. What the evaluator's `refresh`
changes in that context (`Evaluator.refreshed`, such as `Incremental`'s cache over the
training set) is donated to the sweep, which updates it in place and returns it.

Several independent runs advance in lockstep through the same compiled sweeps (`RSO.init_runs`):
every leaf of their state has a leading run axis, each run draws its own dw and minibatches
from its own keys, and the sweep is the one-run sweep under `jax.vmap`. The training set is
shared; the evaluator's context has a run axis where it depends on the parameters
(`Evaluator.prepare_runs`). The hyperparameters in `SWEEPABLE` may differ between runs: they
are state (traced), not part of the compiled program.
"""

import dataclasses
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rsojax.evaluators.base import Evaluator, with_weight
from rsojax.layer_order import check_layers, get_leaf, weight_order
from rsojax.parallel import GRANULARITIES, parallel_sweep
from rsojax.perturbation import PERTURBATIONS
from rsojax.precision import PRECISIONS, check_precision, precision_scope
from rsojax.runs import per_run
from rsojax.sampling import batch_at, block_permutation
from rsojax.schedule import anneal, layer_sigma
from rsojax.sharding import RUNS, by_runs, check_batch, place_runs, replicate, replicated, run_groups, shard_batch


def setting(default=None, help: str = "", choices=None, flag: str | None = "", factory=None):
    """A config field with the help (choices, flag name) the command lines show
    (`rsojax.experiment.flags`): `flag=""` names the flag after the field, `flag=None` gives
    it none; for a bool whose default is True, `flag` names the flag that switches it off."""
    metadata = {"help": help, "flag": flag} | ({"choices": tuple(choices)} if choices is not None else {})
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class RSOConfig:
    """RSO's hyperparameters; the defaults are the reference code's. Each field's
    `metadata["help"]` (and `["choices"]`) says what it is; the command lines show it."""

    batch_size: int = setting(5000, "examples in the minibatch of each weight (the paper: 5000)")
    cycles: int = setting(50, "passes over all layers; sets the anneal (the paper: 50)")
    anneal_floor: float = setting(0.1, "a in sigma_d,c = sigma_d * (a + (1 - a) * (C - c) / C)")
    weight_decay: float = setting(1e-4, "w' = w * (1 - weight_decay) before the candidates are evaluated")
    sigma_scale: float = setting(1.0, "factor on every layer's sigma_d")
    vector_sigma: float = setting(0.167, "sigma_d of BN gamma and beta (vector parameters), before sigma_scale")
    output_first: bool = setting(
        True, "inside a kernel, visit by output channel first (else by input channel)", flag="input_first"
    )
    perturbation: str = setting(
        "normal", "distribution of dw: N(0, sigma_d), U(-2 sigma_d, 2 sigma_d) or {-sigma_d, 0, sigma_d}", PERTURBATIONS
    )
    granularity: str = setting(
        "weight",
        "'weight': one weight at a time (Algorithm 1); 'layer': every weight of a layer against the layer's "
        "starting point; 'neuron': one sequential thread per output neuron, threads in parallel",
        GRANULARITIES,
    )
    parallel_vmap: int = setting(16, "weights ('layer') or threads ('neuron') per vmapped call; memory only")
    precision: str = setting(
        "float32",
        "convolutions and matrix products of candidate losses and test evaluation: 'float32' on every backend, "
        "or the backend's 'default' (TF32 on NVIDIA GPUs: faster, but decisions then depend on the chip)",
        PRECISIONS,
    )

    def __post_init__(self):
        for name in ("batch_size", "cycles", "parallel_vmap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not 0.0 <= self.anneal_floor <= 1.0:
            raise ValueError(f"anneal_floor: expected a value in [0, 1], got {self.anneal_floor!r}")
        if not 0.0 <= self.weight_decay < 1.0:
            raise ValueError(f"weight_decay: expected a value in [0, 1), got {self.weight_decay!r}")
        for name in ("sigma_scale", "vector_sigma"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation: expected one of {sorted(PERTURBATIONS)}, got {self.perturbation!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity: expected one of {list(GRANULARITIES)}, got {self.granularity!r}")
        if self.granularity == "neuron" and not self.output_first:
            raise ValueError("output_first: the 'neuron' granularity visits a neuron's weights in one order; keep True")
        check_precision(self.precision)


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True)
class RSOState:
    """Everything RSO needs to continue: a pytree, so it jits, saves and restores as one.

    Attributes:
      params: the network's parameters.
      sigmas: layer path -> sigma_d before the anneal.
      key: the draws of dw, keyed by (cycle, layer, weight position).
      data_key: the minibatch stream, keyed by (cycle, block) (`rsojax.sampling`).
      cycle: int32, the current cycle, 0-based.
      n_examples: the training set's size (static).
      hypers: the hyperparameters that differ between runs and are not in `sigmas`
        (`RSO.init_runs`), as the constants the compiled program uses: "anneal_floor" and
        "anneal_rest" (1 - anneal_floor), "weight_keep" (1 - weight_decay), each rounded from
        its exact value. Empty where `RSO.config` gives them, and then not part of the pytree,
        so that a single run's state has the structure its checkpoints have always had.

    With several runs (`RSO.init_runs`) every leaf has a leading run axis.
    """

    params: dict
    sigmas: dict
    key: jax.Array
    data_key: jax.Array
    cycle: jax.Array
    n_examples: int = 0
    hypers: dict = dataclasses.field(default_factory=dict)

    _NODES = ("params", "sigmas", "key", "data_key", "cycle")

    @property
    def runs(self) -> int | None:
        """The number of runs the state holds on its leading axis; None for a single run."""
        return None if jnp.ndim(self.cycle) == 0 else int(jnp.shape(self.cycle)[0])

    def replace(self, **changes) -> "RSOState":
        """The state with some fields changed.

        Args:
          **changes: field name -> its new value.

        Returns:
          A new state.
        """
        return dataclasses.replace(self, **changes)

    def tree_flatten_with_keys(self):
        """The pytree's children with their keys, and what is static.

        Returns:
          `([(GetAttrKey(name), value), ...], (n_examples, whether hypers is a child))`.
        """
        nodes = self._NODES + (("hypers",) if self.hypers else ())
        return [(jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in nodes], (self.n_examples, bool(self.hypers))

    @classmethod
    def tree_unflatten(cls, aux, children):
        """The state from `tree_flatten_with_keys`' static part and children.

        Args:
          aux: `(n_examples, whether hypers is a child)`.
          children: the children's values, in order.

        Returns:
          The state.
        """
        n_examples, has_hypers = aux
        fields = dict(zip(cls._NODES + (("hypers",) if has_hypers else ()), children))
        return cls(**fields, n_examples=n_examples)


# The hyperparameters that may differ between the runs of one program (`RSO.init_runs`); the
# others shape the compiled program (a batch size, the cycles of the anneal) or the search.
SWEEPABLE = ("sigma_scale", "vector_sigma", "anneal_floor", "weight_decay")


@flax.struct.dataclass
class RunsContext:
    """The evaluator's context for several runs: the leaves with a leading run axis and those
    every run shares, kept apart so that the sweep maps over the first only (a shared leaf
    that steers control flow, such as `Incremental`'s pending channel pair, stays a branch
    instead of becoming a select over both branches)."""

    batched: tuple
    shared: tuple
    treedef: Any = flax.struct.field(pytree_node=False)
    is_batched: tuple = flax.struct.field(pytree_node=False)

    @classmethod
    def of(cls, ctx, axes) -> "RunsContext":
        """Splits `ctx` by `axes`, a pytree prefix of it: 0 (a leading run axis) or None (shared)."""
        marks = jax.tree.map(lambda ax, sub: jax.tree.map(lambda _: ax is not None, sub), axes, ctx, is_leaf=lambda a: a is None)
        leaves, treedef = jax.tree.flatten(ctx)
        is_batched = tuple(jax.tree.leaves(marks))
        assert len(is_batched) == len(leaves), "axes: not a prefix of the context"
        batched = tuple(a for a, b in zip(leaves, is_batched) if b)
        shared = tuple(a for a, b in zip(leaves, is_batched) if not b)
        return cls(batched=batched, shared=shared, treedef=treedef, is_batched=is_batched)

    def ctx(self, batched=None, shared=None):
        """The evaluator's context, from these leaves (default: the held ones)."""
        batched, shared = iter(self.batched if batched is None else batched), iter(self.shared if shared is None else shared)
        return jax.tree.unflatten(self.treedef, [next(batched) if b else next(shared) for b in self.is_batched])

    def axes(self):
        """The evaluator's context's axes: 0 at each batched leaf, None at each shared one."""
        return jax.tree.unflatten(self.treedef, [0 if b else None for b in self.is_batched])


@dataclasses.dataclass(frozen=True)
class ContextLayout:
    """A context's tree structure and, per leaf, whether the sweep updates it (the evaluator's
    `refreshed`): the sweep takes those leaves apart from the others, and donates them."""

    treedef: Any
    updated: tuple[bool, ...]

    def split(self, ctx) -> tuple[tuple, tuple]:
        """(the leaves the sweep keeps as they are, those it updates)."""
        leaves = jax.tree.leaves(ctx)
        return tuple(a for a, u in zip(leaves, self.updated) if not u), tuple(a for a, u in zip(leaves, self.updated) if u)

    def join(self, kept, updated):
        """The context from its two parts."""
        kept, updated = iter(kept), iter(updated)
        return jax.tree.unflatten(self.treedef, [next(updated) if u else next(kept) for u in self.updated])


@flax.struct.dataclass
class SweepMetrics:
    """Counts and loss sums over the weights of a sweep (or of a chunk of one); `+` adds two.

    Attributes:
      weights: int32, the weights visited.
      accepted: int32, those set to w' + dw or w' - dw.
      nonfinite: int32, those whose three losses were all non-finite (left unchanged).
      loss_before: the sum of the loss at w' over the weights with a finite choice.
      loss_after: the sum of the chosen loss over the same weights.
    """

    weights: jax.Array
    accepted: jax.Array
    nonfinite: jax.Array
    loss_before: jax.Array
    loss_after: jax.Array

    @classmethod
    def zeros(cls, dtype) -> "SweepMetrics":
        """The metrics of no weight.

        Args:
          dtype: the dtype of the loss sums (the parameters').

        Returns:
          Zero counts and zero sums.
        """
        count, loss = jnp.zeros((), jnp.int32), jnp.zeros((), dtype)
        return cls(weights=count, accepted=count, nonfinite=count, loss_before=loss, loss_after=loss)

    def __add__(self, other):
        return jax.tree.map(jnp.add, self, other)


def choose(losses_3: jax.Array) -> jax.Array:
    """The candidate to keep: the first lowest finite loss.

    Args:
      losses_3: the losses of w', w' + dw, w' - dw.

    Returns:
      The index of the first lowest finite loss; -1 if none is finite.
    """
    finite = jnp.isfinite(losses_3)
    best = jnp.argmin(jnp.where(finite, losses_3, jnp.inf))
    return jnp.where(finite.any(), best, -1)


class LayerDraws(NamedTuple):
    """What RSO draws for a layer in a cycle, computed by programs of their own that the
    layer's sweeps take as an argument (`RSO.layer_draws`); with several runs, each array has
    a leading runs axis.

    Attributes:
      perm_N: int32[n_examples], the shuffle of the training set the minibatches are cut from
        (`rsojax.sampling.block_permutation`: one per block of layers).
      dw_P: the perturbation at each visit position of the layer, in the leaf's dtype: the
        layer's sigma this cycle (`RSO.sigma`) times the position's unit draw
        (`rsojax.perturbation.PERTURBATIONS`). Multiplied apart from the sweeps: inside one,
        XLA would fuse the product into w' + dw and w' - dw as a fused multiply-add (one
        rounding instead of two) wherever it fuses the two, so a candidate's last bit would
        depend on how a program is fused (one device or several, one backend or another).
    """

    perm_N: jax.Array
    dw_P: jax.Array


# The draws are not compiled into every layer's sweep: the shuffle's sorts, and the draws' hash
# and inverse error function, were about half of a small sweep's compile time. The layer and
# block are arguments, not constants, so that one program per size serves every layer of
# every `RSO`.


@jax.jit
def _times(sigma, unit_P):
    """sigma * unit_P, one sigma per run (leading axis) or one for all: a program of its own."""
    return sigma[..., None] * unit_P


@functools.partial(jax.jit, static_argnames="n")
def _block_shuffle(data_key, cycle, block, n: int) -> jax.Array:
    """`block_permutation`; with several runs (a leading runs axis), one shuffle per run."""
    if cycle.ndim:
        return jax.vmap(block_permutation, in_axes=(0, 0, None, None))(data_key, cycle, block, n)
    return block_permutation(data_key, cycle, block, n)


@functools.partial(jax.jit, static_argnames=("n", "kind", "dtype"))
def _unit_draws(key, cycle, layer, n: int, kind: str, dtype) -> jax.Array:
    """The unit draws of visit positions 0..n-1 of layer number `layer`, each from its own key
    (bit for bit what a loop over the weights draws: `tests/test_rso.py`); with several runs
    (a leading runs axis), each run's own."""

    def one(key, cycle):
        layer_key = jax.random.fold_in(jax.random.fold_in(key, cycle), layer)
        positions = jnp.arange(n, dtype=jnp.int32)
        return jax.vmap(lambda i: PERTURBATIONS[kind](jax.random.fold_in(layer_key, i), dtype))(positions)

    return jax.vmap(one)(key, cycle) if cycle.ndim else one(key, cycle)


@functools.lru_cache(maxsize=32)
def _shared_sweeps(rso: "RSO") -> tuple:
    """The jitted sweeps of `rso`, shared by every equal `RSO`: a trainer built again (a
    notebook cell run again, the same trainer for each of several runs) traces and compiles
    nothing again."""
    return rso._jitted_sweeps()


def check_data(data, example_shape: tuple[int, ...] | None) -> int:
    """Validates `(x, y)`; returns the number of examples."""
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError("data: expected a pair (x, y) of inputs and integer labels")
    x, y = data
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"data: x has {x.shape[0]} examples but y has {y.shape[0]} labels")
    if y.ndim != 1 or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"data: y must be a vector of integer labels, got {y.dtype} of shape {y.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"data: x must be floating point, got {x.dtype}")
    if example_shape is not None and tuple(x.shape[1:]) != tuple(example_shape):
        raise ValueError(
            f"data: x must have shape (N, {', '.join(map(str, example_shape))}) "
            f"(rank {len(example_shape) + 1}), got {tuple(x.shape)}"
        )
    return x.shape[0]


class RSO:
    """The RSO trainer over one evaluator and an explicit layer order.

    Layers whose paths share their first component (`stages_3/Conv_0/kernel` and
    `stages_3/BatchNorm_0/bias`) form a block: they share one shuffle of the training set per
    cycle, as the reference code's conv block does (`rsojax.sampling`).

    Two `RSO`s of equal evaluators, layers, config and mesh are equal and share their compiled
    sweeps (those of the 32 most recently built distinct trainers are kept): building one again
    compiles nothing again. An `RSO` is not changed once built.

    Args:
      evaluator: computes candidate losses (`rsojax.evaluators`: `Incremental`, `Cached`, ...).
      layers: parameter paths (`"stages_6/Dense_0/kernel"`) in the order they are visited.
      config: hyperparameters.
      mesh: a `jax.sharding.Mesh` with a 'data' axis (`rsojax.sharding.make_mesh`): each
        minibatch is split over its devices, state and data are replicated (None: one device).
        With several runs, a 'runs' axis beside it spreads them over its groups of devices.

    Raises:
      ValueError: `layers` is empty, the batch does not split over the mesh, or the
        granularity needs an evaluator that is `parallel_safe`.
      TypeError: `layers` is not a list of paths.
    """

    def __init__(self, evaluator: Evaluator, layers: Sequence[str], config: RSOConfig = RSOConfig(), mesh=None):
        if isinstance(layers, str) or not isinstance(layers, Sequence):
            raise TypeError(f"layers: expected a list of parameter paths, got {layers!r}")
        if not layers:
            raise ValueError("layers: the list of layers to search is empty")
        self.evaluator = evaluator
        self.layers = tuple(layers)
        self.config = config
        self.mesh = mesh
        check_batch(config.batch_size, mesh)
        if config.granularity != "weight" and not evaluator.parallel_safe:
            raise ValueError(
                f"granularity: {config.granularity!r} searches against the layer's starting point; "
                f"{type(evaluator).__name__} keeps its context in step one weight at a time: use Cached or Generic"
            )
        names = [path.split("/", 1)[0] for path in self.layers]
        self.blocks = tuple(names.index(name) for name in names)  # block id: its first layer's index
        try:
            self._sweep, self._sweep_runs = _shared_sweeps(self)
        except TypeError:  # an evaluator that is not hashable: sweeps of its own
            self._sweep, self._sweep_runs = self._jitted_sweeps()

    def _key(self) -> tuple:
        return type(self), self.evaluator, self.layers, self.config, self.mesh

    def __eq__(self, other) -> bool:
        return isinstance(other, RSO) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _jitted_sweeps(self) -> tuple:
        # The parts of the context that `refresh` updates are donated: the loop updates them in
        # place instead of copying them into its state first (Incremental's P: GBs per call).
        def jitted(impl, placement):
            def sweep(state, kept, updated, draws, start, stop, *, path, layout):
                state, metrics, ctx = impl(state, layout.join(kept, updated), draws, start, stop, path=path)
                # With a mesh, the new state comes back placed exactly as it went in: otherwise
                # its sharding differs, and the next call of each layer's sweep would compile again.
                if self.mesh is not None:
                    state, metrics = jax.lax.with_sharding_constraint((state, metrics), placement(self.mesh))
                return state, metrics, layout.split(ctx)[1]

            return jax.jit(sweep, static_argnames=("path", "layout"), donate_argnames="updated")

        return jitted(self._sweep_impl, replicated), jitted(self._sweep_runs_impl, by_runs)

    def init(self, params, key: jax.Array, data) -> RSOState:
        """The state before the first cycle.

        Args:
          params: the network's initial parameters.
          key: a PRNG key; it seeds the draws of dw and the minibatch stream.
          data: the training set `(x, y)`.

        Returns:
          The state at cycle 0, with each layer's sigma_d.

        Raises:
          ValueError: a layer is not in `params`, or the data are malformed or smaller than
            a batch.
          TypeError: a searched layer is not floating point, or `data` is not a pair.
        """
        check_layers(params, self.layers)
        n = self._check_size(data)
        return replicate(self._state(params, key, n, self.config), self.mesh)

    def init_runs(self, params, keys: jax.Array, data, sweep: Mapping[str, Sequence[float]] | None = None) -> RSOState:
        """The state of several independent runs before their first cycle, advanced together.

        Run k is the run `init(params[k], keys[k], data)` starts, with the hyperparameters
        of `sweep` set to their k-th values: `cycle`, `sweep` and `chunks` advance every run
        at once, in one compiled program per layer, and run k takes the decisions that run
        alone takes (up to the rounding of the batched computation).

        Args:
          params: the runs' initial parameters: every leaf with a leading run axis.
          keys: one PRNG key per run, shape (runs,).
          data: the training set `(x, y)`, shared by the runs.
          sweep: hyperparameters of `SWEEPABLE` that differ between the runs: name -> one
            value per run (the others are `config`'s).

        Returns:
          The state at cycle 0: every leaf has a leading run axis (`RSOState.runs`).

        Raises:
          ValueError: the runs disagree in number, a swept name is not in `SWEEPABLE` or a
            value is invalid, the evaluator cannot evaluate several runs at once, or as `init`.
          TypeError: as `init`.
        """
        if not hasattr(self.evaluator, "prepare_runs"):
            raise ValueError(
                f"evaluator: {type(self.evaluator).__name__} has no prepare_runs, so it cannot evaluate several runs at once"
            )
        keys = jnp.asarray(keys)
        if keys.ndim != 1 or not keys.shape[0]:
            raise ValueError(f"keys: expected one PRNG key per run, shape (runs,), got shape {keys.shape}")
        runs = keys.shape[0]
        if runs % run_groups(self.mesh):
            raise ValueError(f"keys: {runs} runs do not divide over the mesh's {run_groups(self.mesh)} groups of devices ('runs' axis)")
        sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(params)}
        if sizes != {runs}:
            raise ValueError(f"params: every leaf needs a leading axis of the {runs} runs, got leading sizes {sorted(map(str, sizes))}")
        sweep = dict(sweep or {})
        for name, values in sweep.items():
            if name not in SWEEPABLE:
                raise ValueError(f"sweep: {name!r} cannot differ between runs; expected one of {list(SWEEPABLE)}")
            if len(values) != runs:
                raise ValueError(f"sweep: {name} has {len(values)} values for {runs} runs")
        per_run = [jax.tree.map(lambda a, k=k: a[k], params) for k in range(runs)]
        check_layers(per_run[0], self.layers)
        n = self._check_size(data)
        states = [
            self._state(per_run[k], keys[k], n, dataclasses.replace(self.config, **{m: v[k] for m, v in sweep.items()}), sweep)
            for k in range(runs)
        ]
        return place_runs(jax.tree.map(lambda *leaves: jnp.stack(leaves), *states), self.mesh)

    def _check_size(self, data) -> int:
        n = check_data(data, self.evaluator.example_shape)
        if self.config.batch_size > n:
            raise ValueError(f"batch_size: {self.config.batch_size} is larger than the training set ({n} examples)")
        return n

    def _state(self, params, key, n: int, config: RSOConfig, sweep: Mapping = {}) -> RSOState:
        """One run's initial state under `config`; the names in `sweep` become traced `hypers`."""
        sigmas = {
            path: jnp.asarray(
                layer_sigma(get_leaf(params, path).shape, config.sigma_scale, config.vector_sigma),
                get_leaf(params, path).dtype,
            )
            for path in self.layers
        }
        # The constants a Python float gives the compiled program, rounded once from the exact value.
        exact = {"anneal_floor": config.anneal_floor, "anneal_rest": 1.0 - config.anneal_floor,
                 "weight_keep": 1.0 - config.weight_decay}
        names = {"anneal_floor": ("anneal_floor", "anneal_rest"), "weight_decay": ("weight_keep",)}
        float_dtype = jnp.zeros(()).dtype  # float32, or float64 where x64 is on
        hypers = {h: jnp.asarray(np.float64(exact[h]), float_dtype) for name in sweep for h in names.get(name, ())}
        search_key, data_key = jax.random.split(key)
        return RSOState(
            params=params, sigmas=sigmas, key=search_key, data_key=data_key, cycle=jnp.int32(0), n_examples=n, hypers=hypers
        )

    def n_weights(self, state: RSOState, path: str) -> int:
        """The number of weights of layer `path`.

        Args:
          state: the state holding the parameters.
          path: the layer.

        Returns:
          The size of the layer's parameter array (of one run's).
        """
        return math.prod(self.layer_shape(state, path))

    def layer_shape(self, state: RSOState, path: str) -> tuple[int, ...]:
        """The shape of layer `path`'s parameter array in one run.

        Args:
          state: the state holding the parameters (of one run or several).
          path: the layer.

        Returns:
          The array's shape, without the run axis.
        """
        shape = get_leaf(state.params, path).shape
        return shape if state.runs is None else shape[1:]

    def chunk(self, chunk_size: int | None, n: int) -> int:
        """Weights per compiled sweep call for a layer.

        Args:
          chunk_size: the weights asked for per call (None or 0: all).
          n: the layer's number of weights.

        Returns:
          `chunk_size`, or `n` when none is asked for or a parallel granularity searches the
          layer against its starting point (all at once).
        """
        return chunk_size if chunk_size and self.config.granularity == "weight" else n

    def _check(self, state: RSOState, data, path: str):
        n = check_data(data, self.evaluator.example_shape)
        if n != state.n_examples:
            raise ValueError(f"data: {n} examples, but the state was initialised with {state.n_examples}")
        if path not in self.layers:
            raise ValueError(f"path: {path!r} is not one of the layers {list(self.layers)}")

    def prepare(self, state: RSOState, data, path: str, previous=None):
        """The evaluator's context for sweeping a layer (for example, cached layer inputs).

        Args:
          state: the state the sweep starts from.
          data: the training set `(x, y)` the state was initialised with.
          path: the layer.
          previous: the context prepared before, if any; what is still valid is reused.

        Returns:
          The context to pass to `sweep` (for several runs, a `RunsContext`).

        Raises:
          ValueError: `data` is not the state's training set, or `path` is not searched.
        """
        self._check(state, data, path)
        return self._prepare(state, replicate(data, self.mesh), path, previous)

    def _prepare(self, state, data, path, previous):
        with precision_scope(self.config.precision):
            if state.runs is None:
                return self.evaluator.prepare(state.params, path, data, previous)
            previous = previous.ctx() if isinstance(previous, RunsContext) else None
            return RunsContext.of(*self.evaluator.prepare_runs(state.params, path, data, previous))

    def sweep(self, state: RSOState, ctx, path: str, start: int = 0, stop: int | None = None):
        """Visits the weights at visit positions `start` to `stop - 1` of a layer, compiled.

        Args:
          state: the state to start from.
          ctx: the context `prepare` gave for this state and layer.
          path: the layer.
          start: the first visit position.
          stop: one past the last (None: the layer's end).

        Returns:
          The new state, the `SweepMetrics` of these weights, and the context after them (pass
          it on to sweep the next weights, or to `prepare` as `previous`). What `refresh`
          updates in `ctx` (the evaluator's `refreshed` parts, such as `Incremental`'s P) is
          updated in place: `ctx` itself may not be swept again.

        Raises:
          ValueError: the range is outside the layer, a parallel granularity is given less
            than the whole layer, or `ctx` was used up by an earlier sweep.
        """
        with precision_scope(self.config.precision):
            draws = self.layer_draws(state, path)
            layout = self._layout(ctx)
            kept, updated = layout.split(ctx)
            if any(isinstance(a, jax.Array) and a.is_deleted() for a in updated):
                raise ValueError(
                    "ctx: an earlier sweep used this context up (it updates the evaluator's caches in place); "
                    "pass on the context that sweep returned, or prepare one"
                )
            state, metrics, updated = self._sweeper(state)(
                state, kept, updated, draws, *self._range(state, path, start, stop), path=path, layout=layout
            )
            return state, metrics, layout.join(kept, updated)

    def lower(self, state: RSOState, ctx, path: str, start: int = 0, stop: int | None = None) -> jax.stages.Lowered:
        """The sweep `sweep` would run, lowered (to inspect its HLO).

        Args:
          state: the state to start from.
          ctx: the context `prepare` gave for this state and layer.
          path: the layer.
          start: the first visit position.
          stop: one past the last (None: the layer's end).

        Returns:
          The lowered computation, as `jax.jit(...).lower` gives it.
        """
        with precision_scope(self.config.precision):
            draws = self.layer_draws(state, path)
            layout = self._layout(ctx)
            return self._sweeper(state).lower(
                state, *layout.split(ctx), draws, *self._range(state, path, start, stop), path=path, layout=layout
            )

    def _sweeper(self, state):
        return self._sweep if state.runs is None else self._sweep_runs

    def _layout(self, ctx) -> ContextLayout:
        """Which leaves of `ctx` (the evaluator's, or a `RunsContext`) the sweep updates."""
        inner = ctx.ctx() if isinstance(ctx, RunsContext) else ctx
        refreshed = getattr(self.evaluator, "refreshed", None)
        marks = jax.tree.leaves(jax.tree.map(
            lambda mark, sub: jax.tree.map(lambda _: bool(mark), sub),
            False if refreshed is None else refreshed(inner), inner, is_leaf=lambda a: a is None,
        ))
        if isinstance(ctx, RunsContext):  # its leaves: the batched ones, then the shared ones
            marks = [m for m, b in zip(marks, ctx.is_batched) if b] + [m for m, b in zip(marks, ctx.is_batched) if not b]
        return ContextLayout(jax.tree.structure(ctx), tuple(marks))

    def _range(self, state, path, start, stop):
        n = self.n_weights(state, path)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"start, stop: expected 0 <= start <= stop <= {n}, got {start}, {stop}")
        if self.config.granularity != "weight" and (start, stop) != (0, n):
            raise ValueError(f"start, stop: granularity {self.config.granularity!r} sweeps a whole layer (0, {n}) at once")
        return jnp.int32(start), jnp.int32(stop)

    def chunks(
        self, state: RSOState, data, path: str, start: int = 0, chunk_size: int | None = None, ctx=None
    ) -> Iterator[tuple[RSOState, "SweepMetrics", int, object]]:
        """Sweeps a layer to its end in compiled chunks, one chunk per step of the iterator.

        Each chunk starts from a context prepared for its own state, so a run resumed at a
        chunk boundary computes exactly what the uninterrupted run did.

        Args:
          state: the state to start from.
          data: the training set `(x, y)` the state was initialised with.
          path: the layer.
          start: the visit position to start at.
          chunk_size: weights per compiled call (None: the whole layer at once).
          ctx: the context prepared before (for example, the previous layer's last), so that
            caches still valid are reused.

        Yields:
          `(state, metrics, stop, ctx)` after each chunk: the state after it, its metrics, the
          next visit position, and the context after it (pass it on as the next `ctx`).

        Raises:
          ValueError: `data` is not the state's training set, or `path` is not searched.
        """
        self._check(state, data, path)
        data = replicate(data, self.mesh)
        n = self.n_weights(state, path)
        size = self.chunk(chunk_size, n)
        for pos in range(start, n, size):
            stop = min(pos + size, n)
            ctx = self._prepare(state, data, path, ctx)
            state, metrics, ctx = self.sweep(state, ctx, path, pos, stop)
            yield state, metrics, stop, ctx

    def layer(self, state: RSOState, data, path: str, chunk_size: int | None = None) -> tuple[RSOState, SweepMetrics]:
        """Sweeps a whole layer (`chunks`).

        Args:
          state: the state to start from.
          data: the training set `(x, y)` the state was initialised with.
          path: the layer.
          chunk_size: weights per compiled call (None: the whole layer at once).

        Returns:
          The new state and the layer's metrics.
        """
        state, metrics, _ = self._whole_layer(state, data, path, chunk_size, None)
        return state, metrics

    def cycle(self, state: RSOState, data, chunk_size: int | None = None) -> tuple[RSOState, list]:
        """One cycle: every layer in order; then the cycle counter advances.

        Args:
          state: the state to start from.
          data: the training set `(x, y)` the state was initialised with.
          chunk_size: weights per compiled call (None: each layer at once).

        Returns:
          The new state and a list of (path, SweepMetrics), one per layer.
        """
        results, ctx = [], None
        for path in self.layers:
            state, metrics, ctx = self._whole_layer(state, data, path, chunk_size, ctx)
            results.append((path, metrics))
        return state.replace(cycle=state.cycle + 1), results

    def _whole_layer(self, state, data, path, chunk_size, ctx):
        """`chunks` to the layer's end, metrics summed; the last context is passed on."""
        metrics = SweepMetrics.zeros(get_leaf(state.params, path).dtype)  # broadcasts over runs
        for state, m, _, ctx in self.chunks(state, data, path, chunk_size=chunk_size, ctx=ctx):
            metrics = metrics + m
        return state, metrics, ctx

    def layer_draws(self, state: RSOState, path: str) -> LayerDraws:
        """What RSO draws for a layer this cycle, for every visit position at once: the
        shuffle its minibatches are cut from and its perturbations.

        Args:
          state: the state (its keys, cycle and sigmas; with several runs, each run's own).
          path: the layer.

        Returns:
          The `LayerDraws`, which the layer's sweeps and `draws` take.
        """
        layer = self.layers.index(path)
        block, n, dtype = self.blocks[layer], self.n_weights(state, path), get_leaf(state.params, path).dtype
        perm_N = _block_shuffle(state.data_key, state.cycle, jnp.int32(block), state.n_examples)
        # Drawn for the next power of two of positions and cut (each position's draw is its
        # own): one program serves the layers of every size up to it.
        drawn = 1 << (n - 1).bit_length()
        unit_P = _unit_draws(state.key, state.cycle, jnp.int32(layer), drawn, self.config.perturbation, dtype)[..., :n]
        return LayerDraws(perm_N, _times(self.sigma(state, path), unit_P))

    def sigma(self, state: RSOState, path: str) -> jax.Array:
        """The standard deviation of a layer's perturbations this cycle: its sigma_d, annealed.

        Args:
          state: the state (its sigmas, cycle and hypers; with several runs, one per run).
          path: the layer.

        Returns:
          A scalar in the leaf's dtype, or one per run.
        """
        cfg = self.config
        dtype = get_leaf(state.params, path).dtype
        floor = state.hypers.get("anneal_floor", cfg.anneal_floor), state.hypers.get("anneal_rest")
        return jnp.asarray(state.sigmas[path] * anneal(state.cycle, cfg.cycles, *floor).astype(dtype), dtype)

    def draws(self, state: RSOState, path: str, draws: LayerDraws | None = None) -> tuple:
        """What RSO draws for a layer this cycle, keyed by visit position, so every
        granularity (and `rsojax.diagnostics`) gives a weight the same draws.

        Args:
          state: the state (its keys, cycle and sigmas).
          path: the layer.
          draws: the layer's `layer_draws` (None: computed here).

        Returns:
          `(order, dw, batch)`: the visit order (row-major flat indices), and functions of a
          visit position `i` (may be traced) giving its perturbation `dw(i)` and the indices
          of its minibatch `batch(i)`.
        """
        cfg = self.config
        order = jnp.asarray(weight_order(get_leaf(state.params, path).shape, cfg.output_first))
        perm_N, dw_P = self.layer_draws(state, path) if draws is None else draws

        def dw(i):
            return dw_P[i]

        def batch(i):
            return batch_at(perm_N, i, cfg.batch_size)

        return order, dw, batch

    def weight_keep(self, state: RSOState):
        """The factor 1 - weight_decay on a weight before its candidates.

        Args:
          state: the state (its `hypers`).

        Returns:
          A Python float, or the state's traced one where the runs differ in weight decay.
        """
        return state.hypers.get("weight_keep", 1.0 - self.config.weight_decay)

    def _sweep_impl(self, state: RSOState, ctx, draws: LayerDraws, start, stop, *, path: str, runs: bool = False):
        cfg = self.config
        order, dw, batch = self.draws(state, path, draws)
        zeros = SweepMetrics.zeros(get_leaf(state.params, path).dtype)

        keep = self.weight_keep(state)

        def search(ctx, params, j, dw_j, idx_B, *traced_keep):
            idx_B = shard_batch(idx_B, self.mesh)  # with a mesh: the batch is split over its devices
            return search_weight(self.evaluator, ctx, params, path, j, dw_j, idx_B, *(traced_keep or (keep,)))

        # A traced factor is an argument: what `per_run` maps may not close over a run's value.
        keep_arg = (keep,) if isinstance(keep, jax.Array) else ()
        if runs and cfg.granularity == "weight":  # on CPUs, the runs' candidates one run at a time
            search = per_run(search)

        if cfg.granularity != "weight":
            params, metrics = parallel_sweep(
                functools.partial(search, ctx), state.params, path, order, dw, batch, cfg.granularity,
                cfg.parallel_vmap, zeros,
            )
            return state.replace(params=params), metrics, ctx

        def visit(i, carry):
            params, ctx, metrics = carry
            j = order[i]
            ctx = self.evaluator.refresh(ctx, params, path, j)
            new, m = search(ctx, params, j, dw(i), batch(i), *keep_arg)
            return with_weight(params, path, j, new), ctx, metrics + m

        carry = (state.params, ctx, zeros)
        params, ctx, metrics = jax.lax.fori_loop(start, stop, visit, carry)
        return state.replace(params=params), metrics, ctx

    def _sweep_runs_impl(self, state: RSOState, ctx: RunsContext, draws: LayerDraws, start, stop, *, path: str):
        """`_sweep_impl` mapped over the runs; the context's shared leaves are not mapped."""

        def one(state, batched, shared, draws):
            state, metrics, out = self._sweep_impl(state, ctx.ctx(batched, shared), draws, start, stop, path=path, runs=True)
            out = RunsContext.of(out, ctx.axes())
            return state, metrics, out.batched, out.shared

        # With a 'runs' mesh axis, the run axis of everything inside (the batch's sharding
        # constraint included) is split over it.
        spmd = RUNS if run_groups(self.mesh) > 1 else None
        state, metrics, batched, shared = jax.vmap(one, in_axes=(0, 0, None, 0), out_axes=(0, 0, 0, None), spmd_axis_name=spmd)(
            state, ctx.batched, ctx.shared, draws
        )
        return state, metrics, ctx.replace(batched=batched, shared=shared)


def candidate_values(w, dw, keep) -> jax.Array:
    """w', w' + dw, w' - dw with w' = w * keep (keep = 1 - weight_decay, a float or a traced
    scalar), in the order ties are broken."""
    decayed = w * jnp.asarray(keep, w.dtype) if isinstance(keep, jax.Array) else w * keep
    return jnp.stack([decayed, decayed + dw, decayed - dw])


def search_weight(evaluator: Evaluator, ctx, params, path: str, j, dw, idx_B, keep):
    """Algorithm 1 for weight `j` of layer `path`: the value to keep and the step's metrics.

    With w' = w * keep (keep = 1 - weight_decay), the lowest finite loss of w', w' + dw,
    w' - dw on the examples `idx_B` wins (ties to the earlier); if none is finite, w is kept.
    """
    w = get_leaf(params, path).ravel()[j]
    values = candidate_values(w, dw, keep)
    losses = evaluator.losses(ctx, params, path, j, values, idx_B)
    choice = choose(losses)
    kept = choice >= 0
    new = jnp.where(kept, values[jnp.maximum(choice, 0)], w)
    metrics = SweepMetrics(
        weights=jnp.int32(1),
        accepted=(choice > 0).astype(jnp.int32),
        nonfinite=(~kept).astype(jnp.int32),
        loss_before=jnp.where(kept, losses[0], 0).astype(w.dtype),
        loss_after=jnp.where(kept, losses[jnp.maximum(choice, 0)], 0).astype(w.dtype),
    )
    return new, metrics
