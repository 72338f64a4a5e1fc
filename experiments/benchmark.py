"""Seconds per RSO cycle of the paper's MNIST network (or, --model cifar10, its CIFAR-10
residual network), per evaluation path.

Times K weights of every layer through the engine's public API (`RSO.prepare`, `RSO.sweep`)
and extrapolates to the full layer; compilation is timed apart. Per layer and per cycle it
reports seconds, FLOPs and bytes moved (both counted analytically, below) and their rates.
Data are random images of the network's input shape (no dataset needed): the cost does not
depend on the values.

    python experiments/benchmark.py --mode incremental --batch_size 512 --weights_per_layer 64 \
        --out incremental_512.json
    python experiments/benchmark.py --model cifar10 --mode cached --batch_size 512 --train_size 10000 \
        --weights_per_layer 4 --out cifar10_cached_512.json

--precision sets the precision of convolutions and matrix products (`rsojax.precision`): full
float32 by default, `default` for the backend's own (TF32 on NVIDIA GPUs; CPUs compute float32
either way). --conv picks the 3x3 convolutions' backend (`rsojax.conv_kernel`: XLA, or the
Pallas kernel, which off a GPU runs in interpret mode). --global_pool picks the network's
global pool (max, as the reference code).

--trace DIR writes a `jax.profiler` trace of every layer's timed weights, swept once more
after timing, to DIR/<layer> (viewable in TensorBoard's profile plugin or XProf), with the
sweep's compiled HLO beside it (sweep.hlo.txt: which code each kernel runs).

--runs K advances K independent runs (seeds 0..K-1) together in one compiled program
(`RSO.init_runs`): the cycle's seconds are those of the K runs together, `cycle_seconds_per_run`
divides them by K, and `context_mb_per_run` is what each run adds to the evaluator's context
(its caches, which grow with the training set; `rsojax.memory`).

--devices N splits each minibatch over N devices (`rsojax.sharding`); on a CPU, N devices are
made from its cores (`jax_num_cpu_devices`), so compare N = 1, 2, ... on the same machine.
"""

import argparse
import json
import math
import os
import resource
import time

import jax
import jax.numpy as jnp

import rsojax
from rsojax import sharding, xla_flags
from rsojax.conv_kernel import CONVS, on_pallas, resolve_conv
from rsojax.evaluators import EVALUATORS
from rsojax.evaluators.incremental import handles, keeps_p
from rsojax.models import GLOBAL_POOLS, ConvBlock, PoolHead, ResidualBlock
from rsojax.precision import PRECISIONS
from rsojax.train import CHUNK_SIZE

# --model: the network and the size of its dataset's training set.
MODELS = {"mnist": (rsojax.mnist_convnet, 60000), "cifar10": (rsojax.cifar10_resnet, 50000)}


# --- Arithmetic per cycle, counted analytically --------------------------------------------
# Multiply-adds x 2 of the convolutions (a pooled block's conv and pool as the one strided
# correlation that XLA computes) and the dense layer only; BN, ReLU, pooling, the residual
# additions, the loss and data movement are not counted. `stage_costs(model)[0][i]` is stage
# i's cost for one image.


def stage_costs(model) -> tuple[list[float], list[float], list[float]]:
    """Per stage and image: FLOPs, and the elements of the stage's input and output (every
    array of a pytree activation, such as a residual block's skip tensor)."""
    flops, inputs, outputs, x = [], [], [], jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=True), x)["params"]
    for i, stage in enumerate(model.stages):
        inputs.append(float(sum(math.prod(a.shape[1:]) for a in jax.tree.leaves(x))))
        h, skip = x if isinstance(stage, ResidualBlock) and stage.residual else (x, None)
        _, height, width, c_in = h.shape
        if isinstance(stage, ConvBlock | ResidualBlock):
            if stage.pool and not on_pallas(stage.conv, c_in, stage.features):
                pixels, taps = (height // 2) * (width // 2), 16  # one strided 4x4 correlation (conv3x3_xla)
            else:
                pixels, taps = height * width, 9
            flops.append(2.0 * pixels * taps * c_in * stage.features)
            if isinstance(stage, ResidualBlock) and stage.shortcut:  # its 1x1 conv of the skip tensor
                flops[-1] += 2.0 * math.prod(skip.shape[1:]) * stage.features
        elif isinstance(stage, PoolHead):
            flops.append(2.0 * c_in * stage.classes)
        else:
            raise ValueError(f"model: no FLOP count for stage {i} ({type(stage).__name__})")
        x = jax.eval_shape(lambda p, x, i=i: model.apply({"params": p}, x, start=i, stop=i + 1), params, x)
        outputs.append(float(sum(math.prod(a.shape[1:]) for a in jax.tree.leaves(x))))
    return flops, inputs, outputs


def channels(model, d: int) -> tuple[int, int]:
    """The input and output channels of conv stage d's 3x3 conv."""
    return model.stages[d - 1].features if d else model.input_shape[-1], model.stages[d].features


def flops_generic(f, d, leaf, n_weights, batch, n_train, n_chunks, model) -> float:
    """Per weight: the stages before d once (they do not depend on the weight), d on 3 times."""
    del leaf, n_train, n_chunks, model
    return n_weights * batch * (sum(f[:d]) + 3 * sum(f[d:]))


def flops_cached(f, d, leaf, n_weights, batch, n_train, n_chunks, model) -> float:
    """Per weight: stages d on, 3 times. (The stage inputs, once per cycle: `flops_inputs`.)"""
    del leaf, n_train, n_chunks, model
    return n_weights * batch * 3 * sum(f[d:])


def flops_incremental(f, d, leaf, n_weights, batch, n_train, n_chunks, model) -> float:
    """prepare, once per chunk: conv d over the training set. For a kernel, folding each (input,
    output) channel pair into that cache once (conv d over the training set in all) and, per
    weight, one pair's 9 taps on the batch. A first stage without that cache (`keeps_p`): conv d
    on the batch per weight instead. Per weight: if stage d+1 is a conv stage, its conv on the
    batch once (the base) and one input channel of it 3 times, then stages d+2 on 3 times;
    otherwise stages d+1 on 3 times. Leaves `Incremental` leaves to Cached (the head): as
    `flops_cached`. (A shortcut's 1x1 conv, run once per weight on the batch where the searched
    or the next block has one, is counted in full per candidate: an overcount of at most its
    share of f.)"""
    stages = model.stages
    if not handles(stages[d], leaf):
        return flops_cached(f, d, leaf, n_weights, batch, n_train, n_chunks, model)
    kernel = leaf == "Conv_0/kernel"
    c_in, c_out = channels(model, d)
    if keeps_p(model, d):
        total = n_train * f[d] * (n_chunks + kernel)
        per_image = f[d] / (c_in * c_out) if kernel else 0.0
    else:
        total, per_image = 0.0, f[d]
    if d + 1 < len(stages) and handles(stages[d + 1], "Conv_0/kernel"):
        per_image += f[d + 1] + 3 * f[d + 1] / c_out + 3 * sum(f[d + 2 :])
    else:
        per_image += 3 * sum(f[d + 1 :])
    return total + n_weights * batch * per_image


def flops_inputs(f, mode, n_train) -> float:
    """Once per cycle, the cached evaluators compute every stage's input over the training set."""
    return 0.0 if mode == "generic" else n_train * sum(f[:-1])


# --- Bytes per cycle, counted analytically -----------------------------------------------------
# The main-memory traffic of the same work, float32: every stage run on an image reads its input
# and writes its output once (`stage_bytes`; kernels, BN's extra passes and caches that stay in
# cache are not counted), plus what an evaluator reads from and writes to its whole-training-set
# caches. A lower bound: FLOPs / bytes says whether a layer could be bound by arithmetic or by
# memory, and a layer far below both rates is bound by overhead (many small kernels per weight).

FLOAT = 4  # bytes


def stage_bytes(costs) -> list[float]:
    _, inputs, outputs = costs
    return [FLOAT * (a + b) for a, b in zip(inputs, outputs)]


def bytes_generic(costs, d, leaf, n_weights, batch, n_train, n_chunks, model) -> float:
    """Per weight: the stages before d once, d on 3 times."""
    del leaf, n_train, n_chunks, model
    b = stage_bytes(costs)
    return n_weights * batch * (sum(b[:d]) + 3 * sum(b[d:]))


def bytes_cached(costs, d, leaf, n_weights, batch, n_train, n_chunks, model) -> float:
    """Per weight: the batch's rows of stage d's cached input, then stages d on, 3 times."""
    del leaf, n_train, n_chunks, model
    return n_weights * batch * (FLOAT * costs[1][d] + 3 * sum(stage_bytes(costs)[d:]))


def bytes_incremental(costs, d, leaf, n_weights, batch, n_train, n_chunks, model) -> float:
    """As `flops_incremental`: per chunk, conv d over the training set; for a kernel, per (input,
    output) channel pair, one input channel read and one channel of P read and written over the
    training set, and per weight the batch's rows of P and of one input channel (without P:
    conv d on the batch); then the next stage's conv once and its one-channel change 3 times
    (or stages d+1 on 3 times)."""
    stages, b, (_, inputs, outputs) = model.stages, stage_bytes(costs), costs
    if not handles(stages[d], leaf):
        return bytes_cached(costs, d, leaf, n_weights, batch, n_train, n_chunks, model)
    c_in, c_out = channels(model, d)
    if not keeps_p(model, d):
        total, per_image = 0.0, b[d]  # conv d on the batch
    else:
        total = n_train * b[d] * n_chunks
        per_image = FLOAT * outputs[d]  # the batch's rows of P
        if leaf == "Conv_0/kernel":
            pairs = n_weights / 9
            total += pairs * n_train * FLOAT * (inputs[d] / c_in + 2 * outputs[d] / c_out)
            per_image += FLOAT * inputs[d] / c_in
    if d + 1 < len(stages) and handles(stages[d + 1], "Conv_0/kernel"):
        per_image += b[d + 1] + 3 * FLOAT * outputs[d + 1] + 3 * sum(b[d + 2 :])
    else:
        per_image += 3 * sum(b[d + 1 :])
    return total + n_weights * batch * per_image


def bytes_inputs(costs, mode, n_train) -> float:
    """Once per cycle, the cached evaluators run every stage over the training set."""
    return 0.0 if mode == "generic" else n_train * sum(stage_bytes(costs)[:-1])


# Per evaluator: (FLOPs, bytes) of a layer.
COUNTS = {
    "incremental": (flops_incremental, bytes_incremental),
    "cached": (flops_cached, bytes_cached),
    "generic": (flops_generic, bytes_generic),
}


def window(mode: str, shape, k: int) -> int:
    """Weights to time. `incremental` folds its cache once per 9 taps of a kernel (one input and
    output channel pair), so its window is rounded up to whole pairs to count that work in
    proportion."""
    n = math.prod(shape)
    if k == 0 or k >= n - 2:
        return n - 2
    if mode == "incremental" and len(shape) == 4:
        group = shape[0] * shape[1]
        k = group * math.ceil(k / group)
    return min(k, n - 2)


# --trace: device and XLA events only (the Python tracer and the embedded HLO would make each
# layer's trace several MB).
TRACE_OPTIONS = jax.profiler.ProfileOptions()
TRACE_OPTIONS.python_tracer_level = 0
TRACE_OPTIONS.host_tracer_level = 1
TRACE_OPTIONS.enable_hlo_proto = False


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - t


def setup(args):
    """The network, random data of its input shape, and an `RSO` over them with its first state."""
    model = MODELS[args.model][0](global_pool=args.global_pool, conv=args.conv)
    kx, ky, kp = jax.random.split(jax.random.key(args.seed), 3)
    x = jax.random.normal(kx, (args.train_size, *model.input_shape), jnp.float32)
    y = jax.random.randint(ky, (args.train_size,), 0, 10)
    mesh = None if args.runs > 1 else sharding.make_mesh(args.devices)
    config = rsojax.RSOConfig(batch_size=args.batch_size, precision=args.precision)
    rso = rsojax.RSO(EVALUATORS[args.mode](model), model.search_order(), config, mesh=mesh)
    if args.runs == 1:
        params = model.init(kp, x[:2], train=True)["params"]
        return model, (x, y), mesh, rso, rso.init(params, jax.random.key(args.seed), (x, y))
    seeds = range(args.seed, args.seed + args.runs)
    params = jax.vmap(lambda k: model.init(k, x[:2], train=True)["params"])(jnp.stack([jax.random.key(s) for s in seeds]))
    return model, (x, y), mesh, rso, rso.init_runs(params, jnp.stack([jax.random.key(s) for s in seeds]), (x, y))


def time_stage_inputs(rso, state, data) -> tuple[float, object]:
    """Seconds of the stage inputs, computed once per cycle (`run_rso` passes each context on
    as `previous`): the time of a fresh context less that of one reusing them, both warmed up
    first (the reuse compiles steps of its own, which are not part of a cycle). Returns them
    and the fresh context; one context is alive at a time (60,000 images' inputs take GBs)."""
    first_path = rso.layers[0]
    timed(rso.prepare, state, data, first_path)
    ctx, fresh_s = timed(rso.prepare, state, data, first_path)
    timed(rso.prepare, state, data, first_path, previous=ctx)
    reuse_s = min(timed(rso.prepare, state, data, first_path, previous=ctx)[1] for _ in range(2))
    return max(fresh_s - reuse_s, 0.0), ctx


def time_layer(args, rso, state, data, path: str, previous):
    """Times layer `path`: its context, a call's fixed cost and the seconds per weight over a
    window of `k` weights (`window`). Returns the state and context after, and the timings."""
    shape = rso.layer_shape(state, path)
    # Every chunk is prepared from the state it starts from (what `run_rso` does); timed the
    # second time, with the previous layer's context (as the kernel changes between chunks,
    # later chunks of a layer cannot reuse their predecessor's caches either), and with the
    # first dropped, as a run holds no other context while it prepares (conv 1's 3 GB cache
    # prepared beside a second one took 3-4.5 s instead of 1.3 s).
    ctx, first = timed(rso.prepare, state, data, path, previous=previous)
    del ctx
    ctx, prepare_s = timed(rso.prepare, state, data, path, previous=previous)
    # Weights 0 and 1 alone compile the sweep (twice: the state it returns is placed
    # differently from the one it was given); then `k` weights are timed. Each sweep goes on
    # from the context the one before returned (it updates the context in place).
    (state, _, ctx), warm_s = timed(rso.sweep, state, ctx, path, 0, 1)
    (state, _, ctx), warm2_s = timed(rso.sweep, state, ctx, path, 1, 2)
    # A call's fixed cost, paid once per chunk: the fastest of three, so that noise does not
    # make the per-weight time negative.
    calls = []
    for _ in range(3):
        (state, _, ctx), seconds = timed(rso.sweep, state, ctx, path, 2, 2)
        calls.append(seconds)
    call_s = min(calls)
    k = window(args.mode, shape, args.weights_per_layer)
    (state, _, ctx), sweep_s = timed(rso.sweep, state, ctx, path, 2, 2 + k)
    per_weight = (sweep_s - call_s if sweep_s > call_s else sweep_s) / k
    compile_s = max(first - prepare_s, 0.0) + max(warm_s + warm2_s - 2 * per_weight, 0.0)
    timing = {"k": k, "prepare_s": prepare_s, "call_s": call_s, "per_weight": per_weight, "compile_s": compile_s}
    return state, ctx, timing


def trace_layer(folder: str, rso, state, ctx, path: str, k: int):
    """The layer's `k` timed weights once more, untimed, under the profiler into `folder`,
    with the sweep's compiled HLO beside it (which code each kernel runs)."""
    with jax.profiler.trace(folder, profiler_options=TRACE_OPTIONS):
        state, _, ctx = jax.block_until_ready(rso.sweep(state, ctx, path, 2, 2 + k))
    with open(os.path.join(folder, "sweep.hlo.txt"), "w") as fh:
        fh.write(rso.lower(state, ctx, path, 2, 2 + k).compile().as_text())
    return state, ctx


def layer_result(args, model, costs, path: str, n: int, timing: dict) -> dict:
    """A layer's row: its extrapolated seconds per cycle and its counted FLOPs and bytes."""
    d, leaf = rsojax.models.stage_of(path), path.split("/", 1)[1]
    n_chunks = math.ceil(n / args.chunk_size)
    layer_seconds = n_chunks * (timing["prepare_s"] + timing["call_s"]) + n * timing["per_weight"]
    flops_fn, bytes_fn = COUNTS[args.mode]
    layer_flops = args.runs * flops_fn(costs[0], d, leaf, n, args.batch_size, args.train_size, n_chunks, model)
    layer_bytes = args.runs * bytes_fn(costs, d, leaf, n, args.batch_size, args.train_size, n_chunks, model)
    return {
        "layer": path,
        "n_weights": n,
        "timed_weights": timing["k"],
        "weights_per_s": 1.0 / timing["per_weight"],
        "prepare_seconds": timing["prepare_s"],
        "call_seconds": timing["call_s"],
        "layer_seconds": layer_seconds,
        "layer_flops": layer_flops,
        "layer_bytes": layer_bytes,
        "gflops": layer_flops / layer_seconds / 1e9,
        "gbytes_per_s": layer_bytes / layer_seconds / 1e9,
    }


def summary(args, mesh, costs, inputs_s: float, per_layer: list[dict], compile_seconds: float, load_before, memory: dict) -> dict:
    """The whole cycle: the settings, every layer's row, the totals and rates, the machine."""
    cycle_seconds = inputs_s + sum(r["layer_seconds"] for r in per_layer)
    flops = args.runs * flops_inputs(costs[0], args.mode, args.train_size) + sum(r["layer_flops"] for r in per_layer)
    moved = args.runs * bytes_inputs(costs, args.mode, args.train_size) + sum(r["layer_bytes"] for r in per_layer)
    device = jax.devices()[0]
    return {
        "model": args.model,
        "mode": args.mode,
        "precision": args.precision,
        "conv": resolve_conv(args.conv),
        "global_pool": args.global_pool,
        "batch_size": args.batch_size,
        "train_size": args.train_size,
        "weights_per_layer": args.weights_per_layer,
        "seed": args.seed,
        "chunk_size": args.chunk_size,
        "runs": args.runs,
        **sharding.describe(mesh),
        "weights_per_s": args.runs * sum(r["n_weights"] for r in per_layer) / cycle_seconds,
        "stage_inputs_seconds": inputs_s,
        "per_layer": per_layer,
        "cycle_seconds": cycle_seconds,
        "cycle_seconds_per_run": cycle_seconds / args.runs,
        **memory,
        "flops_per_cycle": flops,
        "achieved_gflops": flops / cycle_seconds / 1e9,
        "bytes_per_cycle": moved,
        "achieved_gbytes_per_s": moved / cycle_seconds / 1e9,
        "compile_seconds": compile_seconds,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_memory_mb": (device.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**20 or None,
        "device": f"{device.platform}: {device.device_kind} x{jax.device_count()}, {os.cpu_count()} cores",
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }


def run(args) -> dict:
    """Times every layer of the network (`time_layer`) and sums them into one cycle (`summary`)."""
    model, data, mesh, rso, state = setup(args)
    costs = stage_costs(model)
    load_before = os.getloadavg()
    inputs_s, ctx = time_stage_inputs(rso, state, data)
    per_layer, compile_seconds = [], 0.0
    memory = context_memory(rso, state, data)
    for path in rso.layers:
        n = rso.n_weights(state, path)
        state, ctx, timing = time_layer(args, rso, state, data, path, ctx)
        if args.trace:
            state, ctx = trace_layer(os.path.join(args.trace, path.replace("/", ".")), rso, state, ctx, path, timing["k"])
        compile_seconds += timing["compile_s"]
        row = layer_result(args, model, costs, path, n, timing)
        per_layer.append(row)
        print(
            f"{path:28s} {n:6d} {timing['k']:5d} {row['weights_per_s']:10.1f} {timing['prepare_s']:9.2f}"
            f" {row['layer_seconds']:10.1f} {row['gflops']:8.1f} {row['gbytes_per_s']:6.1f}",
            flush=True,
        )
    return summary(args, mesh, costs, inputs_s, per_layer, compile_seconds, load_before, memory)


def context_memory(rso, state, data) -> dict:
    """The evaluator's largest context over the layers, in MB: what the runs share and what
    each run adds (`rsojax.memory.context_bytes`)."""
    shared, per_run = rsojax.memory.context_bytes(rso, state, data)
    return {"context_mb_shared": shared / 2**20, "context_mb_per_run": per_run / 2**20}


def parse(argv=None) -> argparse.Namespace:
    """The command line; --train_size defaults to the dataset's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--weights_per_layer", type=int, default=64, metavar="K",
                        help="time K weights per layer and extrapolate; 0 = the full layer")
    parser.add_argument("--model", choices=list(MODELS), default="mnist",
                        help="the paper's MNIST network or its CIFAR-10 residual network")
    parser.add_argument("--mode", choices=list(EVALUATORS), default="incremental", help="the evaluation path")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                        help="of convolutions and matrix products (RSOConfig.precision)")
    parser.add_argument("--conv", choices=CONVS, default="xla", help="the 3x3 convolutions' backend (rsojax.conv_kernel)")
    parser.add_argument("--global_pool", choices=GLOBAL_POOLS, default="max", help="the network's global pool")
    parser.add_argument("--out", default=None, metavar="FILE.json")
    parser.add_argument("--train_size", type=int, default=None, help="default: the dataset's (60,000 or 50,000)")
    parser.add_argument("--chunk_size", type=int, default=CHUNK_SIZE,
                        help=f"weights per compiled sweep call (as experiments/mnist.py) [default: {CHUNK_SIZE}]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=1, help="devices each minibatch is split over (0 = all)")
    parser.add_argument("--runs", type=int, default=1, metavar="K",
                        help="advance K runs (seeds SEED..SEED+K-1) together in one program (RSO.init_runs)")
    parser.add_argument("--trace", default=None, metavar="DIR",
                        help="also profile each layer's K weights once more (after timing them) into DIR/<layer>, "
                        "for TensorBoard or XProf")
    args = parser.parse_args(argv)
    args.train_size = args.train_size or MODELS[args.model][1]
    if args.runs < 1 or (args.runs > 1 and args.devices != 1):
        parser.error(f"--runs: expected a positive number of runs on one device, got {args.runs} on {args.devices}")
    return args


def main(argv=None):
    xla_flags.use_recommended()  # before JAX starts its backend
    args = parse(argv)
    if args.devices > 1:  # on a CPU backend, as many devices as asked (no effect on GPUs and TPUs)
        jax.config.update("jax_num_cpu_devices", args.devices)
    print(
        f"model={args.model} mode={args.mode} precision={args.precision} conv={args.conv} global_pool={args.global_pool} batch_size={args.batch_size}"
        f" train_size={args.train_size} K={args.weights_per_layer} devices={args.devices} runs={args.runs}"
    )
    print(f"{'layer':28s} {'n':>6s} {'timed':>5s} {'weights/s':>10s} {'prepare s':>9s} {'layer s':>10s} {'GFLOP/s':>8s} {'GB/s':>6s}")
    result = run(args)
    print(
        f"cycle: {result['cycle_seconds']:.1f} s for {args.runs} run(s), {result['cycle_seconds_per_run']:.1f} s per run "
        f"({result['weights_per_s']:.1f} weights/s on {result['n_devices']} "
        f"device(s), {result['n_processes']} process(es)), {result['flops_per_cycle'] / 1e12:.2f} TFLOP, "
        f"{result['achieved_gflops']:.1f} GFLOP/s, {result['bytes_per_cycle'] / 1e12:.2f} TB moved ({result['achieved_gbytes_per_s']:.1f} GB/s); compile {result['compile_seconds']:.1f} s; "
        f"peak memory {result['peak_memory_mb']:.0f} MB (context: {result['context_mb_shared']:.0f} MB shared, "
        f"{result['context_mb_per_run']:.0f} MB per run); load {result['load_average']}"
    )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
