"""The precision policy reaches the compiled code: every convolution and matrix product of a
sweep (each evaluator) and of test evaluation carries the requested precision.

CPUs compute float32 exactly whatever the precision, so the lowered StableHLO is what shows it.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from conftest import init_params, random_data

import rsojax
from rsojax.evaluation import lower_accuracy
from rsojax.evaluators import EVALUATORS
from rsojax.precision import precision_scope

# precision name -> the operand precisions the StableHLO text then carries
EXPECTED = {"float32": "HIGHEST", "default": "DEFAULT"}


def precisions(text: str) -> dict[str, list[str]]:
    """Per op kind, the operand precisions of every `stablehlo.convolution` and
    `stablehlo.dot_general` in `text`; an op without a precision attribute counts as ''."""
    found = {"convolution": [], "dot_general": []}
    for line in text.splitlines():
        for op, pattern in (
            ("convolution", r"precision_config = \[#stablehlo<precision (\w+)>, #stablehlo<precision (\w+)>\]"),
            ("dot_general", r"precision = \[(\w+), (\w+)\]"),
        ):
            if f"stablehlo.{op}" in line:
                match = re.search(pattern, line)
                found[op] += list(match.groups()) if match else [""]
    return found


def assert_all(text: str, precision: str, min_convs: int):
    found = precisions(text)
    assert len(found["convolution"]) >= 2 * min_convs  # two operands per op: not vacuous
    assert found["dot_general"]  # every path here ends in the dense layer
    assert set(found["convolution"]) | set(found["dot_general"]) == {EXPECTED[precision]}


@pytest.fixture(scope="module")
def float32_convnet():
    # 4 channels: a conv of at most `FEW_CHANNELS` inputs is elementwise multiply-adds (the
    # first, of the images' one channel), exact float32 whatever the setting; the other 5 are
    # convolutions.
    model = rsojax.mnist_convnet(channels=4)
    x, y = random_data(16, model.input_shape, dtype=jnp.float32)
    return model, init_params(model, x, dtype=jnp.float32), (x, y)


@pytest.mark.parametrize("precision", list(EXPECTED))
@pytest.mark.parametrize("path, min_convs", [("stages_1/Conv_0/kernel", 1), ("stages_6/Dense_0/kernel", 0)])
@pytest.mark.parametrize("evaluator", list(EVALUATORS))
def test_sweep_carries_precision(float32_convnet, evaluator, path, min_convs, precision):
    model, params, data = float32_convnet
    config = rsojax.RSOConfig(batch_size=8, precision=precision)
    rso = rsojax.RSO(EVALUATORS[evaluator](model), model.search_order(), config)
    state = rso.init(params, jax.random.key(0), data)
    ctx = rso.prepare(state, data, path)
    assert_all(rso.lower(state, ctx, path, 0, 2).as_text(), precision, min_convs)


def test_default_config_is_float32():
    assert rsojax.RSOConfig().precision == "float32"


@pytest.mark.parametrize("precision", list(EXPECTED))
def test_accuracy_carries_precision(float32_convnet, precision):
    """The test-set evaluation of RSO and SGD: BN statistics and every pass over the test images."""
    model, params, (x, y) = float32_convnet
    text = lower_accuracy(model, params, x, x[:10], y[:10], stats_images=8, eval_batch=4, precision=precision).as_text()
    assert_all(text, precision, min_convs=5 * 2)  # 5 convs for the statistics, 5 per pass


def test_default_precision_of_accuracy_is_float32(float32_convnet):
    model, params, (x, y) = float32_convnet
    assert_all(lower_accuracy(model, params, x, x[:10], y[:10], stats_images=8).as_text(), "float32", min_convs=5)


@pytest.mark.parametrize("make", [lambda: rsojax.RSOConfig(precision="tf16"), lambda: precision_scope("tf16")])
def test_unknown_precision_refused(make):
    with pytest.raises(ValueError, match="precision"):
        make()
