"""Runs the authors' RSO code (train.py of rohun-tripathi/RSO-gradient-free) on rsojax's draws.

The authors' file is loaded from the path given, never copied: this script imports it as a
module and replaces, from outside, the few names it reads at run time:

- the data: `gluon.data.vision.MNIST` (or `CIFAR10`) returns the exported raw images (uint8),
  so the authors' own `get_mnist_data_from_gluon` (`get_cifar_data_from_gluon`) preprocesses
  them; the network (`CNN_ND` with 6 or 9 conv layers) follows the images' shape;
- the draws: `np.random.normal(0, std)` inside their `get_random_perturbation` returns
  `std * u`, u rsojax's unit draw for the visit position, so their sigma_d and anneal apply;
  `ShuffleIter.shuffle` orders the set by rsojax's shuffle of the block;
- the initial weights: rsojax's, written into `net.name_to_matrix` (conv HWIO -> OIHW);
- BatchNorm (`nd.BatchNorm` as the file calls it) in training mode, as cuDNN computes it on
  the GPUs the authors ran on (below); inference mode is MXNet's own;
- recording: each candidate loss `forward_and_return_loss` returns, the choice of each
  `dim_*_random_switch` call, and the searched array after every layer (`evaluate_accuracy`
  is called once after each layer; it also gives the test accuracy). `tqdm` is silenced.

Why BatchNorm is emulated (two facts of MXNet on a CPU, checked with mxnet 1.6.0 and 1.9.1):
1. MXNet's CPU BatchNorm writes the running mean and variance only in a backward pass, which
   train.py never runs: `reset_bn_param` (a training-mode forward under `autograd.record`,
   momentum 0) then leaves them at 0 and 1, and the caching pass and test evaluation, which run
   in inference mode, normalise with those. The authors ran on GPUs, where cuDNN's
   training-mode forward writes the batch statistics into them (momentum 0: replaces them).
   Unchanged on a CPU, one cycle at batch 500 on 10,000 images ends near 16% test accuracy.
2. MXNet's CPU batch statistics over large batches are off by 0.1-1% in variance against
   float64 (both of its CPU backends), which alone flips about 10% of decisions.
The emulation: in training mode (recording), the mean and the (population) variance of each
channel are computed in float64 (NumPy), the output is normalised in float64 and rounded once to
float32, and the statistics (rounded to float32) are written into the running mean and
variance, as cuDNN's forward does with momentum 0. (cuDNN may write the unbiased variance; with
2000 images of at least 7 x 7 per channel that is a factor below 1 + 1.1e-5, not emulated.)

The authors' image iterator (conv 1's) is not reset between cycles, so from the second cycle
on visit i of conv 1 reads batch (i + k) mod n_B of its shuffle, k = its position left by the
previous cycle (16 mod n_B: BN gamma of conv 1 has 16 parameters), where rsojax reads batch
i mod n_B. A rotation of a uniformly random shuffle is one too, so both are the same stream in
distribution; here the shuffle fed to that iterator is rotated by k batches, so that every
visit reads rsojax's batch, and k is recorded (`offset/<cycle>`).

Usage (in the environment of setup.sh; draws from export.py):
  tools/authors_oracle/.venv/bin/python tools/authors_oracle/generate.py \
      --train_py /path/to/RSO-gradient-free/train.py --draws /tmp/oracle_draws.npz \
      --out tests/fixtures/authors_oracle/mnist.npz
"""

import argparse
import hashlib
import importlib.util
import io
import logging
import os
import sys
import time
import zipfile

EMULATION = (
    "BatchNorm in training mode: float64 mean and population variance per channel, output "
    "normalised in float64 and rounded to float32, statistics written to the running mean and "
    "variance (cuDNN's forward with momentum 0); inference mode: MXNet's own"
)
ALPHA = 0.1  # the authors' --anneal default
WD = 1e-4  # the authors' --wd default
NUM_CLASSES = 10


class Override:
    """A module (or object) with some attributes replaced; the rest read through."""

    def __init__(self, base, **attrs):
        self._base = base
        self.__dict__.update(attrs)

    def __getattr__(self, name):
        return getattr(self._base, name)


class Finished(Exception):
    """Raised after the last recorded layer: the authors' loop runs to `total_epochs`."""


def authors_name(path: str) -> str:
    """The authors' name of a searched array of rsojax's `mnist_convnet` / `cifar10_resnet`."""
    stage, leaf = path.split("/", 1)
    k = int(stage[len("stages_"):])
    names = {
        "Dense_0/kernel": "fc_mask_2",
        "Conv_0/kernel": "conv_mask_{}",
        "BatchNorm_0/bias": "beta_{}",
        "BatchNorm_0/scale": "gamma_{}",
        "shortcut_conv/kernel": "filter_increase_{}",
        "shortcut_bn/bias": "filter_increase_beta_{}",
        "shortcut_bn/scale": "filter_increase_gamma_{}",
    }
    return names[leaf].format(k)


def to_authors(a, np):
    """rsojax's layout (conv HWIO) -> the authors' (OIHW); dense (in, out) and vectors as they are."""
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a


def to_rsojax(a, np):
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def save_npz(path: str, arrays: dict, np):
    """An .npz whose bytes depend only on the arrays (fixed zip timestamps, sorted names)."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_py", required=True, help="the authors' train.py (fetched by you; never in this repository)")
    p.add_argument("--draws", required=True, help="the .npz written by export.py")
    p.add_argument("--out", required=True, help="the fixture to write")
    p.add_argument("--layers", type=int, default=0, help="stop after this many layers (0: every layer of the cycles)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of MXNet (fixed for reproducibility)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.train_py):
        p.error(f"--train_py: {args.train_py} is not a file")
    if not os.path.isfile(args.draws):
        p.error(f"--draws: {args.draws} is not a file (run export.py first)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon, nd

    draws = dict(np.load(args.draws))
    layers = [str(s) for s in draws["layers"]]
    names = [authors_name(path) for path in layers]
    cycles = int(draws["config/cycles"])
    batch_size = int(draws["config/batch_size"])
    x_u8, y, xt_u8, yt = draws["x_train_u8"], draws["y_train"], draws["x_test_u8"], draws["y_test"]

    spec = importlib.util.spec_from_file_location("authors_train", args.train_py)
    authors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(authors)

    # The module-level settings its __main__ block would set from the command line.
    logger = logging.getLogger("authors_oracle")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    authors.num_classes = NUM_CLASSES
    authors.total_epochs = int(draws["config/total_cycles"])
    authors.ALPHA = ALPHA
    authors.wd = WD
    authors.logger = logger
    authors.experiment_name = authors.Identifier()

    # What is being recorded, and where in the authors' loop we are.
    cursor = {"layer": 0, "visit": 0}
    losses, dws, out, seen = [], [], {}, {}

    def where():
        return divmod(cursor["layer"], len(layers))

    model = "mnist" if x_u8.ndim == 3 else "cifar10"  # MNIST's 28 x 28 images, or CIFAR-10's 32 x 32 x 3

    class Images:  # gluon's MNIST and CIFAR10: uint8 N x H x W x C in ._data, labels in ._label
        def __init__(self, train=True):
            images = x_u8 if train else xt_u8
            self._data = nd.array(images[..., None] if images.ndim == 3 else images, dtype="uint8")
            self._label = (y if train else yt).astype(np.int32)

    def normal(loc, scale):
        cycle, li = where()
        unit = draws[f"unit/{cycle}/{li}"]
        if cursor["visit"] >= len(unit):
            raise RuntimeError(f"layer {layers[li]}: more draws than its {len(unit)} weights")
        value = loc + scale * np.float64(unit[cursor["visit"]])
        cursor["visit"] += 1
        dws.append(value)
        return value

    def batch_norm(data, gamma=None, beta=None, moving_mean=None, moving_var=None, eps=1e-3, **kw):
        if not autograd.is_training():
            return nd.BatchNorm(data, gamma=gamma, beta=beta, moving_mean=moving_mean, moving_var=moving_var, eps=eps, **kw)
        if kw.get("momentum", 0.9) != 0 or kw.get("fix_gamma", True) or kw.get("use_global_stats", False):
            raise RuntimeError(f"BatchNorm: the emulation covers momentum=0, fix_gamma=False only, got {kw}")
        # In NumPy: MXNet's float64 reductions over (N, H, W) take several times as long.
        x = data.asnumpy().astype(np.float64)
        axes, shape = (0, 2, 3), (1, -1, 1, 1)
        mean = x.mean(axis=axes)
        var = np.square(x - mean.reshape(shape)).mean(axis=axes)
        with autograd.pause():
            moving_mean[:] = mean.astype(np.float32)
            moving_var[:] = var.astype(np.float32)
        scale = gamma.asnumpy().astype(np.float64).reshape(shape) / np.sqrt(var.reshape(shape) + eps)
        y = (x - mean.reshape(shape)) * scale + beta.asnumpy().astype(np.float64).reshape(shape)
        return nd.array(y.astype(np.float32), ctx=data.context, dtype="float32")

    def shuffle(self):
        cycle, li = where()
        key = f"perm/{cycle}/{li}"
        if key not in draws:
            raise RuntimeError(f"shuffle before layer {layers[li]}, which does not start a block")
        if not hasattr(self, "_source"):
            self._source = (self.data, self.label)
            # The authors' preprocessed training set: MNIST's float16 (C = 1: the bytes of N x H x W x C),
            # CIFAR-10's float64 as it runs, in float32, N x H x W x C.
            if model == "mnist" and "authors_x_train_f16_sha256" not in out:
                out["authors_x_train_f16_sha256"] = np.array(hashlib.sha256(self.data.tobytes()).hexdigest())
            if model == "cifar10" and "authors_x_train_f32_sha256" not in out:
                nhwc = np.ascontiguousarray(self.data.astype(np.float32).transpose(0, 2, 3, 1))
                out["authors_x_train_f32_sha256"] = np.array(hashlib.sha256(nhwc.tobytes()).hexdigest())
        k = self.batch_index % self.total_index  # where the iterator reads next (see above)
        if k:
            out[f"offset/{cycle}"] = np.int32(k)
        perm = np.roll(draws[key], k * self.batch_size)
        self.data, self.label = self._source[0][perm], self._source[1][perm]

    forward_and_return_loss = authors.CNN_ND.forward_and_return_loss

    def recorded_loss(self, *a, **k):
        value = forward_and_return_loss(self, *a, **k)
        losses.append(float(value))
        return value

    def recorded_switch(switch):
        def run(*a, **k):
            flip, before, after = switch(*a, **k)
            three = losses[-3:]
            choice = int(np.argmin(three))
            if (choice != 0) != bool(flip) or three[choice] != after or three[0] != before:
                raise RuntimeError("the recorded losses do not match what the authors' search returned")
            seen.setdefault("choices", []).append(choice)
            return flip, before, after

        return run

    evaluate_accuracy = authors.evaluate_accuracy

    def after_layer(test_iter, net, ctx, train_cache=None):
        acc = evaluate_accuracy(test_iter, net, ctx, train_cache)
        cycle, li = where()
        n = draws[f"unit/{cycle}/{li}"].size
        choices = seen.pop("choices", [])
        if cursor["visit"] != n or len(choices) != n or len(losses) != 3 * n:
            raise RuntimeError(f"layer {layers[li]}: {cursor['visit']} draws, {len(choices)} choices for {n} weights")
        prefix = f"c{cycle}/l{li}/"
        out[prefix + "losses"] = np.array(losses, np.float64).reshape(n, 3)
        out[prefix + "choice"] = np.array(choices, np.int8)
        out[prefix + "dw"] = np.array(dws, np.float64)
        out[prefix + "after"] = to_rsojax(net.name_to_matrix[names[li]].asnumpy(), np).astype(np.float32)
        out[prefix + "test_accuracy"] = np.float64(acc)
        print(f"cycle {cycle} {layers[li]:24s} ({names[li]}): {n} weights, {sum(c != 0 for c in choices)} accepted, "
              f"test accuracy {acc:.4f}, {time.time() - start:.0f} s", flush=True)
        losses.clear(), dws.clear()
        cursor["layer"] += 1
        cursor["visit"] = 0
        if cursor["layer"] == (args.layers or cycles * len(layers)):
            raise Finished
        return acc

    vision = Override(gluon.data.vision, MNIST=Images, CIFAR10=Images)
    authors.gluon = Override(gluon, data=Override(gluon.data, vision=vision))
    authors.np = Override(np, random=Override(np.random, normal=normal))
    authors.nd = Override(nd, BatchNorm=batch_norm)
    authors.tqdm = lambda iterable: iterable
    authors.ShuffleIter.shuffle = shuffle
    authors.CNN_ND.forward_and_return_loss = recorded_loss
    for name in ("dim_1_random_switch", "dim_2_random_switch", "dim_4_random_switch"):
        setattr(authors, name, recorded_switch(getattr(authors, name)))
    authors.evaluate_accuracy = after_layer

    ctx = mx.cpu()
    net = authors.CNN_ND(ctx, 1, 6) if model == "mnist" else authors.CNN_ND(ctx, 3, 9)
    if list(net.lyr_optimization) != names:
        raise RuntimeError(f"the authors' layer order {net.lyr_optimization} is not rsojax's {names}")
    for path, name in zip(layers, names):
        init = to_authors(draws[f"init/{path}"], np)
        if tuple(net.name_to_matrix[name].shape) != init.shape:
            raise RuntimeError(f"{name}: the authors' shape {net.name_to_matrix[name].shape}, rsojax's {init.shape}")
        net.name_to_matrix[name] = nd.array(init, ctx=ctx, dtype="float32")

    start = time.time()
    try:
        authors.rso_train(net, ctx, "M10" if model == "mnist" else "C10", batch_size)
    except Finished:
        pass
    else:
        raise RuntimeError("the authors' loop ended before the recorded cycles did")

    for key, value in draws.items():
        if key.startswith(("config/", "init/")) or key in ("layers", "x_train_u8", "y_train", "x_test_u8", "y_test"):
            out[key] = value
    out["generator/mxnet"] = np.array(mx.__version__)
    out["generator/numpy"] = np.array(np.__version__)
    out["generator/emulation"] = np.array(EMULATION)
    save_npz(args.out, out, np)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) in {time.time() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
