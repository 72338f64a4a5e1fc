import math

import pytest

from rsojax.schedule import anneal, layer_sigma


def test_kaiming_sigma_per_layer_kind():
    assert layer_sigma((3, 3, 16, 16)) == pytest.approx(math.sqrt(2 / 144))
    assert layer_sigma((3, 3, 1, 16)) == pytest.approx(math.sqrt(2 / 9))
    assert layer_sigma((16, 10)) == pytest.approx(math.sqrt(2 / 16))
    assert layer_sigma((16,)) == pytest.approx(0.167)
    assert layer_sigma((16, 10), scale=0.5) == pytest.approx(0.5 * math.sqrt(2 / 16))
    assert layer_sigma((16,), scale=2.0) == pytest.approx(0.334)


def test_linear_anneal_to_floor():
    cycles, a = 50, 0.1
    assert float(anneal(0, cycles, a)) == pytest.approx(1.0)
    assert float(anneal(25, cycles, a)) == pytest.approx(0.1 + 0.9 * 25 / 50)
    assert float(anneal(cycles - 1, cycles, a)) == pytest.approx(0.1 + 0.9 / 50)
    assert float(anneal(0, 1, 0.3)) == pytest.approx(1.0)
