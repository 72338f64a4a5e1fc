"""What the generator feeds the authors' code: a data subset, rsojax's initial weights and draws.

Runs in the project's environment (JAX, TFDS); writes one .npz that `generate.py` reads in the
MXNet environment, which has neither. For every layer of every cycle it holds rsojax's unit
draws (dw / sigma_d,c, from `RSO.draws` with the anneal and sigma set to 1, so the authors' code
applies its own sigma and anneal to them) and, for the first layer of each block, rsojax's
shuffle of the training set (read back from `RSO.draws`' batches).

Usage (from the repository root, in the project's venv):
  python tools/authors_oracle/export.py --out /tmp/oracle_draws.npz [--train_images 4000 ...]
"""

import argparse
import dataclasses
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)  # as the test suite runs; every array is cast explicitly

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rsojax.evaluators import Cached  # noqa: E402
from rsojax.layer_order import get_leaf  # noqa: E402
from rsojax.models import cifar10_resnet, mnist_convnet  # noqa: E402
from rsojax.rso import RSO, RSOConfig  # noqa: E402
from rsojax.train import init_params  # noqa: E402

TEST_IMAGES = 2000  # the authors' test iterator reads whole passes of 2000 images


def raw_mnist(data_dir: str | None, n_train: int, n_test: int):
    """The first MNIST images of each split as uint8 N x 28 x 28, with their labels, from TFDS."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")
    (x, y), (xt, yt) = tfds.as_numpy(
        tfds.load("mnist", split=["train", "test"], batch_size=-1, as_supervised=True, data_dir=data_dir)
    )
    return x[:n_train, :, :, 0], y[:n_train].astype(np.int32), xt[:n_test, :, :, 0], yt[:n_test].astype(np.int32)


def random_cifar10(n_train: int, n_test: int, seed: int = 0):
    """uint8 images of CIFAR-10's shape with random labels: uniform noise on an 8 x 8 grid, each
    value repeated over a 4 x 4 square (so that the fixture compresses to about a sixteenth).
    RSO's decisions need no real images, and this project's machines have no CIFAR-10."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_test, 8, 8, 3), dtype=np.uint8).repeat(4, axis=1).repeat(4, axis=2)
    y = rng.integers(0, 10, n_train + n_test).astype(np.int32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def export(args) -> dict:
    from rsojax.data import preprocess

    if args.model == "mnist":
        x_u8, y, xt_u8, yt = raw_mnist(args.data_dir, args.train_images, TEST_IMAGES)
        data = preprocess(x_u8[..., None], y, xt_u8[..., None], yt)
        model = mnist_convnet()
    else:
        x_u8, y, xt_u8, yt = random_cifar10(args.train_images, TEST_IMAGES)
        data = preprocess(x_u8, y, xt_u8, yt, per_channel_mean=True)
        model = cifar10_resnet()
    x_N, y_N = jnp.asarray(data.x_train, jnp.float32), data.y_train
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), init_params(model, args.init_seed))
    config = RSOConfig(batch_size=args.batch_size, cycles=args.total_cycles)
    layers = model.search_order()
    rso = RSO(Cached(model), layers, config)
    state = rso.init(params, jax.random.key(args.seed), (x_N, y_N))
    # The same draws with sigma_d and the anneal equal to 1: dw is then the unit draw itself.
    unit = RSO(rso.evaluator, layers, dataclasses.replace(config, anneal_floor=1.0))
    unit_state = state.replace(sigmas={p: jnp.ones((), jnp.float32) for p in layers})
    n_batches = args.train_images // args.batch_size
    out = {
        "config/train_images": args.train_images,
        "config/batch_size": args.batch_size,
        "config/cycles": args.cycles,
        "config/total_cycles": args.total_cycles,
        "config/seed": args.seed,
        "config/init_seed": args.init_seed,
        "layers": np.array(layers),
        "blocks": np.array(rso.blocks, np.int32),
        "x_train_u8": x_u8,
        "y_train": y,
        "x_test_u8": xt_u8,
        "y_test": yt,
    }
    for path in layers:
        out[f"init/{path}"] = np.asarray(get_leaf(params, path), np.float32)
    for cycle in range(args.cycles):
        s = unit_state.replace(cycle=jnp.int32(cycle))
        for li, path in enumerate(layers):
            _, dw, batch = unit.draws(s, path)
            n = get_leaf(params, path).size
            out[f"unit/{cycle}/{li}"] = np.asarray(jax.vmap(dw)(jnp.arange(n)), np.float32)
            if rso.blocks[li] == li:  # the block's first layer: its shuffle, batch after batch
                perm = np.concatenate([np.asarray(batch(i)) for i in range(n_batches)])
                assert sorted(perm.tolist()) == list(range(args.train_images)), "batches must cover the set"
                out[f"perm/{cycle}/{li}"] = perm.astype(np.int32)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the .npz to write (outside the repository)")
    p.add_argument("--model", choices=("mnist", "cifar10"), default="mnist",
                   help="mnist: the 6-conv network on MNIST; cifar10: the residual network on random CIFAR-10-shaped images")
    p.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR"), help="TFDS data directory with mnist/3.0.1")
    p.add_argument("--train_images", type=int, default=4000, help="first training images (a multiple of 2000)")
    p.add_argument("--batch_size", type=int, default=100, help="minibatch per weight (divides train_images)")
    p.add_argument("--cycles", type=int, default=1, help="cycles whose draws are exported")
    p.add_argument("--total_cycles", type=int, default=50, help="C of the anneal")
    p.add_argument("--seed", type=int, default=72, help="rsojax's key for the draws")
    p.add_argument("--init_seed", type=int, default=420, help="rsojax's key for the initial weights")
    args = p.parse_args(argv)
    if args.train_images <= 0 or args.train_images % 2000:
        p.error("--train_images: the authors' caching and statistics passes read whole passes of 2000 images")
    if args.batch_size <= 0 or args.train_images % args.batch_size:
        p.error("--batch_size: must divide --train_images (the authors' iterator has no partial batches)")
    out = export(args)
    np.savez(args.out, **out)
    print(f"wrote {args.out}: {len(out)} arrays")


if __name__ == "__main__":
    main()
