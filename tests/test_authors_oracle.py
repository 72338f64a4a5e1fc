"""rsojax's decisions against the authors' own code (train.py of rohun-tripathi/RSO-gradient-free,
MXNet), from a fixture that code wrote on rsojax's draws (tools/authors_oracle, docs/authors-oracle.md).

The fixture holds, for every weight of a whole MNIST cycle along the authors' path, the authors'
three candidate losses (float64 sums of their float32 network), their choice, the dw they used,
and each searched array after its layer. rsojax follows the same path: at each weight it draws
its own dw and, at the weights compared, computes its own losses and choice from the authors'
state; it then keeps the authors' choice, so one tie at float32 precision does not part the two
states for the rest of the cycle.
"""

import functools
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from rsojax.data import Dataset, preprocess
from rsojax.evaluators import EVALUATORS
from rsojax.evaluators.base import with_weight
from rsojax.layer_order import get_leaf, set_leaf
from rsojax.models import cifar10_resnet, mnist_convnet
from rsojax.precision import precision_scope
from rsojax.rso import RSO, RSOConfig, candidate_values, choose

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "authors_oracle")

# rsojax's float32 candidate losses agree with the authors' (float64 sums over their float32
# network: other kernels, another order of operations) to LOSS_RTOL, relative; the largest
# difference over the fixture's 36,048 losses is 2.9e-7, a few float32 ulps of the sum. A
# decision can then differ only where the authors' two best losses are closer than the two
# losses' errors together: a tie, within TIE_RTOL of the best. The fixture holds 41 ties in
# 12,016 decisions, none exact.
LOSS_RTOL = 4e-7
TIE_RTOL = 2 * LOSS_RTOL


@functools.cache
def fixture(name: str) -> dict:
    """tests/fixtures/authors_oracle/<name>.npz: "mnist" (a whole cycle) or "cifar10" (the
    residual network's first layers of a cycle, on random images of CIFAR-10's shape)."""
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as f:
        return {k: f[k] for k in f.files}


def model_and_data(fx: dict):
    """The network and preprocessed data of a fixture: MNIST's 28 x 28 images (stored without
    their channel axis), preprocessed by `rsojax.data.preprocess`, or CIFAR-10's 32 x 32 x 3,
    preprocessed as the authors' code does: scaled and centred in float64, rounded once to
    float32 (`preprocess` rounds the images to float32 first and subtracts a float32 mean,
    which moves some inputs by an ulp; the decisions are compared on the same inputs)."""
    x_u8, xt_u8 = fx["x_train_u8"], fx["x_test_u8"]
    if x_u8.ndim == 3:
        return mnist_convnet(), preprocess(x_u8[..., None], fx["y_train"], xt_u8[..., None], fx["y_test"])
    x64, xt64 = x_u8.transpose(0, 3, 1, 2) / 255, xt_u8.transpose(0, 3, 1, 2) / 255  # their N x C x H x W
    mean = x64.mean(axis=(0, 2, 3)).reshape(1, -1, 1, 1)
    x, xt = ((a - mean).astype(np.float32).transpose(0, 2, 3, 1) for a in (x64, xt64))
    y, yt = jnp.asarray(fx["y_train"], jnp.int32), jnp.asarray(fx["y_test"], jnp.int32)
    return cifar10_resnet(), Dataset(jnp.asarray(x), y, jnp.asarray(xt), yt)


def nested(flat: dict) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
    out = {}
    for path, value in flat.items():
        node = out
        *heads, leaf = path.split("/")
        for head in heads:
            node = node.setdefault(head, {})
        node[leaf] = value
    return out


@functools.partial(jax.jit, static_argnames=("rso", "path"))
def follow(rso: RSO, state, ctx, draws, choices, compared, *, path: str):
    """rsojax's candidate losses and its own choice at the visit positions where `compared` is
    true, and dw at each, visiting every weight of layer `path` in order along the authors'
    path: after each weight, the authors' choice `choices[i]` is kept. The evaluator's context
    is refreshed at every weight, as a sweep does, compared or not.

    Returns:
      The parameters after the layer and (choice, losses_3, dw) per visit position (choice -1
      and NaN losses where not compared).
    """
    order, dw, batch = rso.draws(state, path, draws)

    def visit(carry, xs):
        params, ctx = carry
        i, authors_choice, compare = xs
        j = order[i]
        ctx = rso.evaluator.refresh(ctx, params, path, j)
        values = candidate_values(get_leaf(params, path).ravel()[j], dw(i), rso.weight_keep(state))
        losses = lax.cond(
            compare,
            lambda: rso.evaluator.losses(ctx, params, path, j, values, batch(i)),
            lambda: jnp.full(3, jnp.nan, values.dtype),
        )
        return (with_weight(params, path, j, values[authors_choice]), ctx), (choose(losses), losses, dw(i))

    positions = jnp.arange(choices.shape[0], dtype=jnp.int32)
    xs = (positions, choices.astype(jnp.int32), compared)
    (params, _), out = lax.scan(visit, (state.params, ctx), xs)
    return params, out


def compared_positions(n: int) -> np.ndarray:
    """The visit positions whose losses and decisions are compared in a layer of `n` weights:
    all of a layer of at most 160 (the MNIST network's head, conv 1, every BN parameter); of a
    3 x 3 kernel of more, one weight of each (input, output) channel pair, its tap cycling with the pair's index
    (the pairs' 9 taps are visited one after another), so every pair and every tap is compared."""
    positions = np.arange(n)
    if n <= 160:
        return np.ones(n, bool)
    return positions % 9 == (positions // 9) % 9


def oracle_setup(name: str, evaluator: str):
    fx = fixture(name)
    model, data = model_and_data(fx)
    layers = [str(s) for s in fx["layers"]]
    config = RSOConfig(batch_size=int(fx["config/batch_size"]), cycles=int(fx["config/total_cycles"]))
    rso = RSO(EVALUATORS[evaluator](model), layers, config)
    params = nested({path: jnp.asarray(fx[f"init/{path}"], jnp.float32) for path in layers})
    train = (jnp.asarray(data.x_train, jnp.float32), data.y_train)
    state = rso.init(params, jax.random.key(int(fx["config/seed"])), train)
    return fx, rso, state, train


def decisions_against_authors(
    name: str, evaluator: str, visits: int | None = None, layers=None, spread: bool = False
) -> dict:
    """Follows every recorded cycle; returns per layer what differs from the authors' code.

    With `visits`, only the first `visits` weights of each layer are followed; with `layers`,
    only those layers. A layer not followed in full is then set to the authors' weights after
    it, so the path goes on from their state. With `spread`, the losses and decisions are
    compared at `compared_positions` only (dw and the weights after the layer at every one).
    """
    fx, rso, state, train = oracle_setup(name, evaluator)
    report, ctx = {}, None
    for cycle in range(int(fx["config/cycles"])):
        assert int(state.cycle) == cycle
        for li, path in enumerate(rso.layers):
            at = f"c{cycle}/l{li}/"
            if at + "losses" not in fx:  # a fixture over the first layers of its last cycle
                break
            n = fx[at + "choice"].size
            m = n if visits is None else min(n, visits)
            if layers is not None and path not in layers:
                state = state.replace(params=set_leaf(state.params, path, jnp.asarray(fx[at + "after"])))
                continue
            theirs, choices = fx[at + "losses"][:m], fx[at + "choice"][:m]
            compared = compared_positions(m) if spread else np.ones(m, bool)
            with precision_scope(rso.config.precision):
                ctx = rso.prepare(state, train, path, ctx)
                draws = rso.layer_draws(state, path)
                params, (own, losses, dw) = follow(rso, state, ctx, draws, jnp.asarray(choices), compared, path=path)
            dw = np.asarray(dw, np.float64)
            own, losses = np.asarray(own)[compared], np.asarray(losses, np.float64)[compared]
            theirs, choices = theirs[compared], choices[compared]
            best_two = np.sort(theirs, axis=1)[:, :2]
            tie = best_two[:, 1] - best_two[:, 0] <= TIE_RTOL * np.abs(best_two[:, 0])
            report[(cycle, path)] = {
                "weights": m,
                "compared": int(compared.sum()),
                "ties": int(tie.sum()),
                "ties_decided_otherwise": int((tie & (own != choices)).sum()),
                "decisions_differ": np.flatnonzero(compared)[(own != choices) & ~tie].tolist(),
                "loss_rel_err": float(np.max(np.abs(losses - theirs) / np.abs(theirs))),
                "dw_rel_err": float(np.max(np.abs(dw - fx[at + "dw"][:m]) / np.abs(fx[at + "dw"][:m]))),
            }
            if m == n:
                report[(cycle, path)]["weights_err"] = float(np.max(np.abs(get_leaf(params, path) - fx[at + "after"])))
            else:
                params = set_leaf(params, path, jnp.asarray(fx[at + "after"]))
            state = state.replace(params=params)
        state = state.replace(cycle=state.cycle + 1)
    return report


def test_fixture_is_a_whole_cycle_of_the_full_network():
    """The MNIST fixture covers every searched parameter of the 16-channel network, every layer,
    and its data are the authors' preprocessing of the images rsojax preprocesses."""
    fx = fixture("mnist")
    model, data = model_and_data(fx)
    layers = [str(s) for s in fx["layers"]]
    assert layers == model.search_order()
    assert sum(fx[f"c0/l{li}/choice"].size for li in range(len(layers))) == 12_016
    assert [fx[f"c0/l{li}/after"].shape for li in range(len(layers))] == [fx[f"init/{path}"].shape for path in layers]
    ours = hashlib.sha256(np.asarray(data.x_train, np.float16).tobytes()).hexdigest()
    assert ours == str(fx["authors_x_train_f16_sha256"])


# Incremental, the default, along the whole cycle: every weight of every layer is visited (its
# context refreshed, the authors' choice kept, dw and the weights after each layer compared),
# and the losses and decisions are compared at `compared_positions`: every weight of the head,
# conv 1 and the BN parameters, one weight per (input, output) channel pair of the larger
# kernels (1,776 of the 12,016 decisions). The others, whose whole cycle takes minutes on two
# cores, over the first 32 weights of a layer of every kind, from the authors' state at the
# layer's start: the head, the conv of the last stage, of the first pooled stage (the most
# weights at 28 x 28) and of the first stage (the images), BN gamma and beta.
SUBSET = dict(
    visits=32,
    layers=(
        "stages_6/Dense_0/kernel",
        "stages_5/Conv_0/kernel",
        "stages_3/BatchNorm_0/scale",
        "stages_1/Conv_0/kernel",
        "stages_0/Conv_0/kernel",
        "stages_0/BatchNorm_0/bias",
    ),
)
COMPARED = {"incremental": dict(spread=True), "cached": SUBSET, "generic": SUBSET}


@pytest.mark.parametrize("evaluator", list(EVALUATORS))
def test_same_decisions_as_the_authors_code(evaluator):
    """Every compared decision equals the authors' code's, but at ties (their two best losses
    within TIE_RTOL), for each evaluator; dw, the losses and the weights after every layer agree
    to float32 rounding."""
    assert_as_the_authors(decisions_against_authors("mnist", evaluator, **COMPARED[evaluator]))


def assert_as_the_authors(report: dict):
    """The same decisions but at ties; dw, losses and each whole layer's weights to float32 rounding."""
    differ = {f"{c}:{p}": r["decisions_differ"][:10] for (c, p), r in report.items() if r["decisions_differ"]}
    assert not differ, f"decisions differ from the authors' code at visit positions {differ}"
    for (cycle, path), r in report.items():
        assert r["dw_rel_err"] < 1e-6, (cycle, path, r)
        assert r["loss_rel_err"] < LOSS_RTOL, (cycle, path, r)
        assert r.get("weights_err", 0.0) < 1e-6, (cycle, path, r)


RESIDUAL_HEAD = ("stages_9/Dense_0/kernel",)
RESIDUAL_BLOCK_9 = ("stages_8/Conv_0/kernel", "stages_8/BatchNorm_0/bias", "stages_8/BatchNorm_0/scale")


def test_residual_fixture_holds_the_first_layers_of_a_cycle():
    """The CIFAR-10 fixture: the residual network's head and block 9 (whose block adds block 7's
    output), on the authors' preprocessing of the images the test preprocesses."""
    fx = fixture("cifar10")
    model, data = model_and_data(fx)
    layers = [str(s) for s in fx["layers"]]
    assert layers == model.search_order()
    assert layers[:4] == [*RESIDUAL_HEAD, *RESIDUAL_BLOCK_9]
    assert "c0/l3/losses" in fx and "c0/l4/losses" not in fx
    ours = hashlib.sha256(np.asarray(data.x_train, np.float32).tobytes()).hexdigest()
    assert ours == str(fx["authors_x_train_f32_sha256"])


@pytest.mark.parametrize("evaluator", list(EVALUATORS))
def test_residual_network_head_as_the_authors_code(evaluator):
    """The residual network's head: its 320 decisions as the authors' code's (Generic, which runs
    the whole network per weight: the first 32)."""
    visits = 32 if evaluator == "generic" else None
    report = decisions_against_authors("cifar10", evaluator, visits, RESIDUAL_HEAD)
    assert list(report) == [(0, RESIDUAL_HEAD[0])]
    assert_as_the_authors(report)


@pytest.mark.xfail(
    strict=True,
    reason="the authors' code evaluates a block that adds a skip (3, 5, 7, 9) from the block after "
    "the skip's source: block i - 1 runs again on each minibatch with the batch's BN statistics; "
    "rsojax starts at block i from the caching pass's output of block i - 1 (inference statistics)",
)
def test_residual_block_as_the_authors_code():
    """Block 9 of the residual network, its first 32 weights of each layer (Incremental)."""
    assert_as_the_authors(decisions_against_authors("cifar10", "incremental", 32, RESIDUAL_BLOCK_9))
