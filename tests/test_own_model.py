"""notebooks/own_model.ipynb runs as a user runs it (the kernel in notebooks/, fewer cycles) and
trains two Flax models that rsojax does not define, on scikit-learn's digits. A module of its
own, so that pytest-xdist runs it beside the quickstart notebook rather than after it."""

import re

from conftest import execute_notebook


def test_own_model_notebook_trains_both_models_well_above_chance(monkeypatch):
    """Two cycles of RSO, and two epochs of Adam, take each model from chance (10%) to over 50%
    test accuracy on the 400 test digits (here: RSO 88% MLP, 68% CNN; Adam 87%, 70%)."""
    monkeypatch.setenv("OWN_MODEL_CYCLES", "2")
    outputs = execute_notebook("own_model.ipynb")
    accuracy = {(m, o): float(a) for m, o, a in re.findall(r"^(MLP|CNN) (RSO|Adam): test accuracy ([\d.]+)%", outputs, re.M)}
    assert accuracy.keys() == {(m, o) for m in ("MLP", "CNN") for o in ("RSO", "Adam")}, outputs
    assert all(a > 50 for a in accuracy.values()), accuracy
