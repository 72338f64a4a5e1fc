"""One prepared check of rsojax on a GPU, in one call, within a time budget.

    PYTHONPATH=. python3 experiments/gpu_check.py --data gpu/mnist.npz --out $OUT --budget_s 480

Four parts by default and a fifth on request, each with a share of --budget_s (time a part
leaves unused goes to the next); each is guarded, so a failure in one is recorded and the
others still run:

  benchmark  `experiments/benchmark.py` per evaluator (incremental, cached) at batch 5000
             and 512, at precision float32 and default (TF32 on NVIDIA GPUs), as
             subprocesses, before this process touches the GPU (which JAX would claim);
             batch 5000 first; a run that cannot finish in what is left is skipped.
  protocol   the paper's protocol (`rsojax.experiment.ExperimentConfig` defaults: the
             default evaluator, batch 5000, the 50-cycle anneal, all training images) for as
             many cycles as fit: test accuracy and seconds per cycle.
  agreement  on the parameters the protocol reached, the decisions of precision "default"
             against "float32" for random conv-2 weights at the protocol's batch, all from
             one state (`rsojax.diagnostics.agreement`, with the Cached evaluator).
  sgd        the optax SGD baseline (`rsojax.experiment.SGDConfig`) on the same network,
             data and card, for as many epochs as fit: seconds per epoch and test accuracy.
  kernel     (only when --parts names it) the decisions of the Pallas convolution
             (`rsojax.conv_kernel`, conv "pallas") against XLA's at float32 for random conv-2
             weights, from the protocol's state as `agreement` does, and the device's peak memory.

--bench_convs runs each benchmark with each convolution backend (`benchmark.py --conv`);
--bench_cifar10_batch_sizes adds CIFAR-10 benchmarks (`benchmark.py --model cifar10`, all
50,000 training images) at those batch sizes. --bench_runs K,... times K runs advanced together
in one program (`benchmark.py --runs K`) for each K; docs/many-runs.md has its device call. docs/gpu-kernel.md has the kernel's device call.

--parts picks the parts (their budget shares are renormalised). --baseline DIR runs each
benchmark of --baseline_modes once more from another checkout (an earlier commit unpacked
with `git archive`), right after this checkout's: the two checkouts on one card, in one call.
--trace profiles the first benchmark run's layers (`benchmark.py --trace`).

Writes OUT/gpu_check.json (every number, the benchmark JSONs included), OUT/gpu_check.md
(markdown tables for the README, with the card, the JAX version and the commit),
OUT/gpu_check.log (this output and the benchmarks'), all rewritten after every part, and
with --trace OUT/traces.tar.gz.
--tiny shrinks every part so that the whole script runs on a CPU in a few minutes (a smoke
test); each size can also be set alone.
"""

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = {"benchmark": 0.40, "protocol": 0.30, "agreement": 0.10, "kernel": 0.10, "sgd": 0.15}  # shares, in run order
DEFAULT_PARTS = ("benchmark", "protocol", "agreement", "sgd")
RESERVE = 0.05  # of the budget, kept for writing the results
AGREEMENT_LAYER = "stages_1/Conv_0/kernel"  # conv 2: the layer of the measurement in docs/results.md

# Sizes: the real check and the CPU smoke test (--tiny); a flag given explicitly wins.
FULL = {
    "train_subset": 0, "batch_size": 5000, "channels": 16, "max_cycles": 0, "sgd_batch_size": 128, "max_epochs": 0,
    "agreement_weights": 256, "bench_modes": "incremental,cached", "bench_batch_sizes": "5000,512",
    "bench_precisions": "float32,default", "bench_train_size": 60000, "bench_weights": 36, "bench_convs": "xla",
    "bench_cifar10_batch_sizes": "", "bench_runs": "1",
}
TINY = {
    "train_subset": 512, "batch_size": 64, "channels": 2, "max_cycles": 2, "sgd_batch_size": 64, "max_epochs": 2,
    "agreement_weights": 16, "bench_modes": "cached", "bench_batch_sizes": "32",
    "bench_precisions": "float32", "bench_train_size": 256, "bench_weights": 1, "bench_convs": "xla",
    "bench_cifar10_batch_sizes": "", "bench_runs": "1",
}


class Check:
    """The results so far, the log, and the clock of the budget."""

    def __init__(self, args):
        self.args, self.tic = args, time.monotonic()
        self.end = self.tic + args.budget_s * (1 - RESERVE)
        os.makedirs(args.out, exist_ok=True)
        self.log_file = open(os.path.join(args.out, "gpu_check.log"), "a")
        self.results = {
            "script": "experiments/gpu_check.py",
            "argv": sys.argv[1:],
            "commit": args.commit or commit(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": args.budget_s,
            "sizes": {k: getattr(args, k) for k in FULL},
            "parts_run": args.parts,
            "baseline": baseline_commit(args.baseline),
            "parts": {},
        }

    def say(self, line: str, quiet: bool = False):
        """A progress line on stdout (unless `quiet`) and in the log."""
        line = f"[gpu_check {time.monotonic() - self.tic:6.1f}s] {line}"
        if not quiet:
            print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def deadline(self, part: str) -> float:
        """When `part` must stop: its share of the time left, against the parts still to run."""
        names = [p for p in PARTS if p in self.args.parts]
        shares = PARTS | self.args.shares
        left = sum(shares[p] for p in names[names.index(part):])
        return time.monotonic() + max(self.end - time.monotonic(), 0.0) * shares[part] / left

    def run(self, part: str, fn, *args):
        """Runs `fn(deadline, result, *args)`, a part filling `result`; records its status,
        time and any error, and writes the files whatever happens."""
        result = self.results["parts"].setdefault(part, {})
        deadline = self.deadline(part)
        self.say(f"{part}: start, {deadline - time.monotonic():.0f} s of budget")
        tic = time.monotonic()
        try:
            out = fn(deadline, result, *args)
            result["status"] = "ok"
        except Exception as e:  # noqa: BLE001: one part's failure must not lose the others'
            out = None
            result |= {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            self.say(f"{part}: FAILED {type(e).__name__}: {e}")
            self.say(traceback.format_exc(), quiet=True)
        result["seconds"] = time.monotonic() - tic
        self.say(f"{part}: {result['status']} in {result['seconds']:.0f} s")
        self.write()
        return out

    def write(self):
        """gpu_check.json, then gpu_check.md (a failure in the tables loses no number)."""
        from rsojax.records import write_json

        write_json(os.path.join(self.args.out, "gpu_check.json"), self.results)
        try:
            text = markdown(self.results)
        except Exception as e:  # noqa: BLE001
            text = f"The tables could not be made ({type(e).__name__}: {e}); the numbers are in gpu_check.json.\n"
            self.say(traceback.format_exc(), quiet=True)
        with open(os.path.join(self.args.out, "gpu_check.md"), "w") as f:
            f.write(text)


def commit() -> str:
    """The checkout's commit (with "-dirty" if it has changes), or "unknown" without git."""
    try:
        return subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def baseline_commit(folder: str | None) -> str | None:
    """The commit of a --baseline checkout, from its commit.txt where it has one."""
    if folder is None:
        return None
    path = os.path.join(folder, "commit.txt")
    return open(path).read().strip() if os.path.isfile(path) else f"unknown ({folder})"


def child_env(root: str = ROOT) -> dict:
    """The environment of a subprocess: this one's, with the checkout at `root` importable."""
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def preflight() -> str:
    """The device a fresh process gets, once rsojax imports there: found in a subprocess,
    so that this one leaves the GPU to the benchmarks. Fails in seconds where the image's
    packages cannot run rsojax or JAX sees no GPU, before any budget is spent."""
    probe = "import jax, rsojax.diagnostics, rsojax.experiment; d = jax.devices()[0]; print(d.platform, d.device_kind)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=child_env(), cwd=ROOT,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"rsojax does not run here: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


# ---- the parts ---------------------------------------------------------------------------


def benchmark_plan(a) -> list[tuple[str, str, str, list[str]]]:
    """(name, checkout, its root, benchmark.py's arguments) per run, batch 5000 first, MNIST
    then CIFAR-10, each convolution backend; each XLA run of a --baseline_modes evaluator
    followed by the same run from the baseline (which has XLA's convolution only)."""
    plan = []
    cifar10 = ["--model", "cifar10", "--train_size", str(min(a.bench_train_size, 50000))]  # CIFAR-10 has 50,000
    sizes = [(b, "", []) for b in map(int, a.bench_batch_sizes.split(","))]
    sizes += [(b, "cifar10_", cifar10) for b in map(int, filter(None, a.bench_cifar10_batch_sizes.split(",")))]
    for batch, model, model_args in sizes:
        for mode in a.bench_modes.split(","):
            for precision in a.bench_precisions.split(","):
                for conv in a.bench_convs.split(","):
                    for runs in map(int, a.bench_runs.split(",")):
                        args = ["--mode", mode, "--batch_size", str(batch), "--precision", precision, *model_args]
                        name = f"{model}{mode}_{batch}_{precision}"
                        if conv != "xla":
                            args, name = [*args, "--conv", conv], f"{name}_{conv}"
                        if runs != 1:
                            args, name = [*args, "--runs", str(runs)], f"{name}_runs{runs}"
                        plan.append((name, "this", ROOT, args))
                        if a.baseline and conv == "xla" and runs == 1 and mode in a.baseline_modes.split(","):
                            plan.append((f"baseline_{name}", "baseline", os.path.abspath(a.baseline), args))
    return plan


def run_process(cmd: list[str], root: str, timeout: float) -> tuple[str, str]:
    """Runs `cmd` in the checkout at `root`; returns its status ("ok", "exit code N" or
    "timed out after N s") and its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(root), cwd=root)
    except subprocess.TimeoutExpired as e:  # its partial output can come back as bytes
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
        return f"timed out after {timeout:.0f} s", output
    return ("ok" if proc.returncode == 0 else f"exit code {proc.returncode}"), proc.stdout + proc.stderr


def benchmark(deadline: float, result: dict, check: Check):
    """experiments/benchmark.py per (batch, evaluator, precision), each in its own process."""
    a = check.args
    result["runs"] = runs = []
    tmp = tempfile.mkdtemp(prefix="gpu_check_bench_")
    longest = 0.0
    plan = benchmark_plan(a)
    for i, (name, checkout, root, args) in enumerate(plan):
        left = deadline - time.monotonic()
        if left < longest:  # the runs take about as long as each other
            runs.append({"name": name, "status": f"skipped: {left:.0f} s left, a run took {longest:.0f} s"})
            check.say(f"benchmark {name}: skipped ({left:.0f} s left)")
            continue
        out = os.path.join(tmp, f"{name}.json")
        cmd = [sys.executable, os.path.join(root, "experiments", "benchmark.py"), "--train_size", str(a.bench_train_size),
               *args, "--weights_per_layer", str(a.bench_weights), "--out", out]
        if a.trace and i == 0:
            cmd += ["--trace", os.path.join(tmp, "trace")]
        tic = time.monotonic()
        status, output = run_process(cmd, root, left)
        seconds = time.monotonic() - tic
        longest = max(longest, seconds)
        check.say(f"benchmark {name} output:\n{output}", quiet=True)
        run = {"name": name, "checkout": checkout, "status": status, "process_seconds": seconds}
        if status == "ok":
            with open(out) as f:
                run["result"] = r = json.load(f)
            check.say(f"benchmark {name}: cycle {r['cycle_seconds']:.2f} s, "
                      f"compile {r['compile_seconds']:.0f} s, {r['achieved_gflops']:.0f} GFLOP/s "
                      f"({seconds:.0f} s with start-up)")
        else:
            check.say(f"benchmark {name}: {status}; last output: {output.strip()[-500:]}")
        runs.append(run)
    if os.path.isdir(os.path.join(tmp, "trace")):  # one file: what comes back from a device is counted in files
        with tarfile.open(os.path.join(a.out, "traces.tar.gz"), "w:gz") as tar:
            tar.add(os.path.join(tmp, "trace"), arcname="trace")
        check.say(f"benchmark: the profile of {plan[0][0]} is in traces.tar.gz")
    if not any(r["status"] == "ok" for r in runs):
        raise RuntimeError("no benchmark run finished")


def protocol(deadline: float, result: dict, check: Check, setup):
    """RSO at the protocol's settings until the deadline or `max_cycles`; returns the state."""
    from rsojax.train import run_rso

    config, model, data, rso = setup
    a = check.args
    result |= {"paper_protocol": config.is_paper_protocol(), "evaluator": config.evaluator,
               "batch_size": config.rso.batch_size, "cycles_planned": config.rso.cycles,
               "precision": config.rso.precision, "train_images": int(data.x_train.shape[0]),
               "cycles": [], "layers": [], "stopped": "all cycles done"}
    state, last = None, rso.layers[-1]
    for step in run_rso(rso, model, data, seed=config.seed, init_seed=config.init_seed, chunk_size=config.chunk_size):
        state = step.run.state
        if step.record is not None:
            r = step.record
            result["layers"].append({k: r[k] for k in ("cycle", "layer", "accepted", "test_accuracy", "wall_time_s")})
            if r["layer"] == last:
                cycles = result["cycles"]
                seconds = r["wall_time_s"] - (cycles[-1]["wall_time_s"] if cycles else 0.0)
                cycles.append({"cycle": r["cycle"] + 1, "test_accuracy": r["test_accuracy"],
                               "wall_time_s": r["wall_time_s"], "seconds": seconds})
                check.say(f"protocol: cycle {r['cycle'] + 1}: test accuracy {100 * r['test_accuracy']:.2f}%, "
                          f"{seconds:.1f} s (training time {r['wall_time_s']:.0f} s)")
                summarise_protocol(result)
                check.write()  # a kill by the outer timeout keeps the cycles done
                if a.max_cycles and len(cycles) >= a.max_cycles:
                    result["stopped"] = "max_cycles"
                    break
        if time.monotonic() > deadline:
            result["stopped"] = "budget"
            break
    summarise_protocol(result)
    return state


def summarise_protocol(result: dict):
    cycles, layers = result["cycles"], result["layers"]
    result["cycles_done"] = len(cycles)
    result["layer_sweeps_done"] = len(layers)
    if layers:
        result["best_test_accuracy"] = max(r["test_accuracy"] for r in layers)
    if cycles:
        result["first_cycle_s"] = cycles[0]["seconds"]  # with compilation
    if len(cycles) > 1:
        result["median_cycle_s"] = float(np.median([c["seconds"] for c in cycles[1:]]))
        # Per layer in the last whole cycle: where the time goes.
        last = [r for r in layers if r["cycle"] == cycles[-1]["cycle"] - 1]
        start = cycles[-2]["wall_time_s"]
        result["last_cycle_layer_s"] = {}
        for r in last:
            result["last_cycle_layer_s"][r["layer"]] = r["wall_time_s"] - start
            start = r["wall_time_s"]


def compare_decisions(result: dict, check: Check, setup, state, models: tuple, precisions: tuple) -> dict:
    """The decisions of two RSOs (Cached, each with its model and precision) for random conv-2
    weights, all from `state` (the protocol's, or the initial one where the protocol reached
    none), into `result` (`rsojax.diagnostics.agreement`)."""
    from rsojax.diagnostics import agreement as compare
    from rsojax.evaluators import EVALUATORS
    from rsojax.rso import RSO
    from rsojax.train import start_rso

    config, model, data, rso = setup
    if state is None:
        state = start_rso(rso, model, data, config.seed, config.init_seed).run.state
        result["state"] = "initial parameters (the protocol part reached no state)"
    else:
        result["state"] = "after the protocol part"
    # Cached: the Incremental losses without a per-weight context; 4 weights at a time bounds
    # the memory of the candidates' activations at batch 5000 (the decisions do not change).
    a, b = (RSO(EVALUATORS["cached"](m), rso.layers, dataclasses.replace(config.rso, precision=p, parallel_vmap=4),
                mesh=rso.mesh) for m, p in zip(models, precisions))
    n = a.n_weights(state, AGREEMENT_LAYER)
    positions = np.sort(np.random.default_rng(0).choice(n, min(check.args.agreement_weights, n), replace=False))
    result |= {"layer": AGREEMENT_LAYER, "cycle": int(state.cycle), "batch_size": config.rso.batch_size}
    result |= compare(a, b, state, (data.x_train, data.y_train), AGREEMENT_LAYER, positions)
    return result


def agreement(deadline: float, result: dict, check: Check, setup, state):
    """Precision "default" against "float32" on random conv-2 weights, from `state`."""
    del deadline  # one compiled call per precision: nothing to stop between
    model = setup[1]
    result["precisions"] = ["float32", "default"]
    compare_decisions(result, check, setup, state, (model, model), ("float32", "default"))
    check.say(f"agreement: {result['agree']} of {result['weights']} decisions equal "
              f"({100 * result['agreement']:.1f}%), median loss error {result['median_loss_error']:.3g}, "
              f"median gap {result['median_gap']:.3g}")


def kernel(deadline: float, result: dict, check: Check, setup, state):
    """The Pallas convolution against XLA's, both float32, on random conv-2 weights from `state`."""
    import jax

    del deadline  # one compiled call per backend: nothing to stop between
    model = setup[1]
    pallas = model.clone(stages=tuple(s.clone(conv="pallas") if hasattr(s, "conv") else s for s in model.stages))
    result |= {"convs": ["xla", "pallas"], "precision": "float32"}
    compare_decisions(result, check, setup, state, (model, pallas), ("float32", "float32"))
    memory = jax.devices()[0].memory_stats() or {}
    result["device_peak_memory_mb"] = memory.get("peak_bytes_in_use", 0) / 2**20 or None
    check.say(f"kernel: {result['agree']} of {result['weights']} decisions equal to XLA's "
              f"({100 * result['agreement']:.1f}%), median loss error {result['median_loss_error']:.3g}, "
              f"median gap {result['median_gap']:.3g}; device peak memory {result['device_peak_memory_mb']} MB")


def sgd(deadline: float, result: dict, check: Check, setup):
    """The optax SGD baseline until the deadline or `max_epochs`."""
    import optax

    from rsojax.train import run_sgd

    config, model, data, rso = setup
    a, s = check.args, config.sgd
    result |= {"learning_rate": s.learning_rate, "momentum": s.momentum, "batch_size": a.sgd_batch_size, "epochs": []}
    optimizer = optax.sgd(s.learning_rate, momentum=s.momentum)
    steps = run_sgd(model, data, optimizer, epochs=s.epochs, batch_size=a.sgd_batch_size, seed=config.seed,
                    init_seed=config.init_seed, mesh=rso.mesh, precision=config.rso.precision)
    for step in steps:
        r, epochs = step.record, result["epochs"]
        seconds = r["wall_time_s"] - (epochs[-1]["wall_time_s"] if epochs else 0.0)
        epochs.append({"epoch": r["epoch"] + 1, "test_accuracy": r["test_accuracy"], "wall_time_s": r["wall_time_s"],
                       "seconds": seconds})
        check.say(f"sgd: epoch {r['epoch'] + 1}: test accuracy {100 * r['test_accuracy']:.2f}%, {seconds:.1f} s")
        if time.monotonic() > deadline or (a.max_epochs and len(epochs) >= a.max_epochs):
            break
    result["epochs_done"] = len(result["epochs"])
    if len(result["epochs"]) > 1:
        result["median_epoch_s"] = float(np.median([e["seconds"] for e in result["epochs"][1:]]))


# ---- the markdown ------------------------------------------------------------------------


def markdown(results: dict) -> str:
    """The results as markdown tables for the README: a line on where they were measured,
    then a section per part."""
    parts = results["parts"]
    out = [f"Measured by `experiments/gpu_check.py` on {results.get('device', 'an unknown device')}, "
           f"jax {results.get('jax_version', '?')}, rsojax at {results['commit']}, {results['started']}.", ""]
    out += benchmark_markdown(parts.get("benchmark", {}), results["commit"], results.get("baseline"))
    out += protocol_markdown(parts.get("protocol", {}))
    out += agreement_markdown(parts.get("agreement", {}))
    if "kernel" in parts:
        out += kernel_markdown(parts["kernel"])
    out += sgd_markdown(parts.get("sgd", {}))
    return "\n".join(out)


def benchmark_markdown(bench: dict, commit: str, baseline: str | None) -> list[str]:
    """A row per benchmark run: evaluator, batch, precision, convolution, the checkout's commit, the times."""
    from rsojax.records import markdown_table

    rows = []
    for run in bench.get("runs", []):
        r = run.get("result")
        if r is None:
            rows.append([run["name"], "", "", "", "", "", run["status"], "", "", "", "", ""])
            continue
        conv2 = next(x for x in r["per_layer"] if x["layer"] == AGREEMENT_LAYER)
        checkout = commit if run.get("checkout", "this") == "this" else baseline
        mode = r["mode"] if r.get("model", "mnist") == "mnist" else f"{r['mode']} ({r['model']})"  # a baseline may predate the key
        runs = r.get("runs", 1)  # a baseline may predate the key
        rows.append([mode, r["batch_size"], r["precision"], r.get("conv", "xla"), runs, checkout, f"{r['cycle_seconds']:.2f}",
                     f"{r['cycle_seconds'] / runs:.2f}", f"{1000 / conv2['weights_per_s']:.3f}", f"{r['weights_per_s']:.0f}",
                     f"{r['achieved_gflops']:.0f}", f"{r['compile_seconds']:.0f}"])
    table = markdown_table(["evaluator", "batch", "precision", "conv", "runs", "code", "cycle (s)", "per run (s)",
                            "conv 2 (ms/weight)", "weights/s", "GFLOP/s", "compile (s)"], rows) if rows else _status(bench)
    return ["### Seconds per cycle (`experiments/benchmark.py`)", "", table, ""]


def protocol_markdown(prot: dict) -> list[str]:
    """Test accuracy and training time after each cycle of the paper's protocol."""
    from rsojax.records import markdown_table

    out = ["### The paper's protocol (as many cycles as fitted)", ""]
    if not prot.get("cycles"):
        return out + [_status(prot) + f" ({prot.get('layer_sweeps_done', 0)} layer sweeps, no whole cycle)", ""]
    cycles = prot["cycles"]
    return out + [
        f"{prot['evaluator']} evaluator, batch {prot['batch_size']}, {prot['cycles_planned']}-cycle anneal, "
        f"{prot['train_images']:,} training images, precision {prot['precision']}:", "",
        markdown_table(["cycles done", *[str(c["cycle"]) for c in cycles]],
                       [["test accuracy (%)", *[f"{100 * c['test_accuracy']:.2f}" for c in cycles]],
                        ["training time (s)", *[f"{c['wall_time_s']:.1f}" for c in cycles]]]), "",
        f"First cycle {prot['first_cycle_s']:.1f} s (with compilation)"
        + (f", then {prot['median_cycle_s']:.2f} s per cycle (the median from cycle 2 on, whose layers of "
           "one chunk compile again on a mesh)" if "median_cycle_s" in prot else "")
        + f"; best test accuracy after any layer sweep {100 * prot['best_test_accuracy']:.2f}%.", "",
    ]


def agreement_markdown(agree: dict) -> list[str]:
    """How many decisions precision default shares with float32, and the losses' error and gap."""
    from rsojax.records import markdown_table

    out = ["### Decisions: precision default against float32", ""]
    if "agreement" not in agree:
        return out + [_status(agree), ""]
    return out + [markdown_table(
        ["layer", "state", "batch", "weights", "same decision", "median loss error", "median gap (best two)"],
        [[f"`{agree['layer']}`", f"cycle {agree['cycle']}, {agree['state']}", agree["batch_size"], agree["weights"],
          f"{agree['agree']} ({100 * agree['agreement']:.1f}%)", f"{agree['median_loss_error']:.3g}",
          f"{agree['median_gap']:.3g}"]]), ""]


def kernel_markdown(k: dict) -> list[str]:
    """How many decisions the Pallas convolution shares with XLA's, and the device's peak memory."""
    from rsojax.records import markdown_table

    out = ["### Decisions: the Pallas convolution against XLA's, float32", ""]
    if "agreement" not in k:
        return out + [_status(k), ""]
    return out + [markdown_table(
        ["layer", "state", "batch", "weights", "same decision", "median loss error", "median gap (best two)",
         "device peak memory (MB)"],
        [[f"`{k['layer']}`", f"cycle {k['cycle']}, {k['state']}", k["batch_size"], k["weights"],
          f"{k['agree']} ({100 * k['agreement']:.1f}%)", f"{k['median_loss_error']:.3g}", f"{k['median_gap']:.3g}",
          k["device_peak_memory_mb"]]]), ""]


def sgd_markdown(s: dict) -> list[str]:
    """Test accuracy and training time after each epoch of the SGD baseline."""
    from rsojax.records import markdown_table

    out = ["### The optax SGD baseline", ""]
    if not s.get("epochs"):
        return out + [_status(s), ""]
    epochs = s["epochs"]
    out += [f"SGD, learning rate {s['learning_rate']}, momentum {s['momentum']}, batch {s['batch_size']}:", "",
            markdown_table(["epochs done", *[str(e["epoch"]) for e in epochs]],
                           [["test accuracy (%)", *[f"{100 * e['test_accuracy']:.2f}" for e in epochs]],
                            ["training time (s)", *[f"{e['wall_time_s']:.1f}" for e in epochs]]]), ""]
    if "median_epoch_s" in s:
        out += [f"{s['median_epoch_s']:.2f} s per epoch after the first (median).", ""]
    return out


def _status(part: dict) -> str:
    return f"Not measured: {part.get('error') or part.get('status') or 'not run'}."


# ---- the command line --------------------------------------------------------------------


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--data", required=True, help="MNIST as .npz (x_train, y_train, x_test, y_test; see the README)")
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--budget_s", type=float, default=480.0, help="seconds for all four parts [default: 480]")
    p.add_argument("--tiny", action="store_true", help="CPU-sized parts (a smoke test)")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"the parts to run, in their order, of {','.join(PARTS)} [default: {','.join(DEFAULT_PARTS)}]")
    p.add_argument("--shares", default="", metavar="PART=SHARE,...",
                   help=f"budget shares other than the defaults {PARTS} (they are renormalised over --parts)")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="another checkout (for example `git archive` of an earlier commit, with its commit in "
                   "DIR/commit.txt): its benchmark runs right after each run of --baseline_modes, the two "
                   "checkouts on one card")
    p.add_argument("--baseline_modes", default="incremental", help="the evaluators run from --baseline too")
    p.add_argument("--trace", action="store_true",
                   help="the first benchmark run also writes a jax.profiler trace per layer (OUT/traces.tar.gz)")
    p.add_argument("--commit", default=None, help="the code's commit, where the checkout has no git [default: git's]")
    for name, value in FULL.items():
        limit = " (0: no limit)" if name.startswith("max") else ""
        text = f"[default: {value}; with --tiny: {TINY[name]}]{limit}"
        p.add_argument(f"--{name}", type=type(value), default=None, help=text)
    args = p.parse_args(argv)
    args.parts = args.parts.split(",")
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; the parts are {list(PARTS)}")
    try:
        args.shares = {k: float(v) for k, v in (item.split("=") for item in filter(None, args.shares.split(",")))}
    except ValueError:
        p.error(f"--shares: expected PART=SHARE,..., got {args.shares!r}")
    if set(args.shares) - set(PARTS) or not all(v > 0 for v in args.shares.values()):
        p.error(f"--shares: expected positive shares of the parts {list(PARTS)}, got {args.shares}")
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "experiments", "benchmark.py")):
        p.error(f"--baseline: {args.baseline} holds no experiments/benchmark.py")
    for name in FULL:
        if getattr(args, name) is None:
            setattr(args, name, (TINY if args.tiny else FULL)[name])
    return args


def preflight_or_exit(check: Check, args):
    """Stops the script (exit 1), saying why, where rsojax cannot run or, at the full sizes,
    JAX sees no accelerator; before any part spends budget."""
    try:
        check.results["preflight"] = found = preflight()
        if found.startswith("cpu") and not args.tiny:
            raise RuntimeError(f"JAX sees no accelerator ({found}); the full sizes are GPU work (--tiny for a CPU)")
    except (RuntimeError, subprocess.SubprocessError) as e:
        check.results["preflight_error"] = str(e)
        check.say(f"preflight: FAILED {e}")
        check.write()
        sys.exit(1)
    check.say(f"preflight: {found}")


def prepare(check: Check, args):
    """The protocol's config, model, data and trainer, on this process's device (claimed only
    now, after the benchmarks' subprocesses); records the device."""
    import jax

    from rsojax import experiment, sharding
    from rsojax.evaluators import EVALUATORS
    from rsojax.rso import RSOConfig
    from rsojax.train import rso_trainer

    device = jax.devices()[0]
    check.results |= {"device": f"{device.device_kind} ({device.platform}) x{jax.device_count()}",
                      "jax_version": jax.__version__}
    check.say(f"device {check.results['device']}, jax {jax.__version__}")
    config = experiment.ExperimentConfig(
        data=args.data, train_subset=args.train_subset, channels=args.channels,
        rso=RSOConfig(batch_size=args.batch_size),
    )
    tic = time.monotonic()
    try:
        data, model = experiment.load_data(config), experiment.build_model(config)
    except Exception as e:
        check.results["data_error"] = f"{type(e).__name__}: {e}"
        check.say(f"data: FAILED {check.results['data_error']}; the other parts need it")
        check.write()
        raise
    # As `experiment.train_and_evaluate` runs it: on a mesh of all devices (here, one).
    mesh = sharding.make_mesh(config.devices)
    check.say(f"data: {data.x_train.shape[0]:,} training and {data.x_test.shape[0]:,} test images "
              f"({time.monotonic() - tic:.1f} s)")
    return config, model, data, rso_trainer(model, config.rso, EVALUATORS[config.evaluator](model), mesh=mesh)


def finish(check: Check) -> dict:
    """Writes the files a last time and prints the tables."""
    check.write()
    check.say(f"done; {check.args.out}/gpu_check.md:\n" + markdown(check.results))
    return check.results


def main(argv=None) -> dict:
    args = parse(argv)
    from rsojax.xla_flags import use_recommended

    use_recommended()  # as the command lines run (benchmark.py sets them too), before JAX starts a backend
    # One persistent compilation cache for the benchmarks and this process: the protocol's
    # sweeps are the benchmark's incremental float32 ones at batch 5000, compiled once.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="gpu_check_jax_cache_"))
    check = Check(args)
    check.say(f"budget {args.budget_s:.0f} s, sizes {check.results['sizes']}, commit {check.results['commit']}")
    preflight_or_exit(check, args)
    parts = args.parts
    if "benchmark" in parts:
        check.run("benchmark", benchmark, check)  # first: the subprocesses need the GPU to themselves
    if not set(parts) & {"protocol", "agreement", "kernel", "sgd"}:  # the device as the benchmarks saw it
        ran = [r["result"] for r in check.results["parts"]["benchmark"].get("runs", []) if "result" in r]
        if ran:
            check.results |= {"device": ran[0]["device"], "jax_version": ran[0]["jax_version"]}
        return finish(check)
    setup = prepare(check, args)
    state = check.run("protocol", protocol, check, setup) if "protocol" in parts else None
    if "agreement" in parts:
        check.run("agreement", agreement, check, setup, state)
    if "kernel" in parts:
        check.run("kernel", kernel, check, setup, state)
    if "sgd" in parts:
        check.run("sgd", sgd, check, setup)
    return finish(check)


if __name__ == "__main__":
    main()
