"""The docs' figures, drawn from recorded results (docs/data/*.json), never by hand.

    python experiments/figures.py            # docs/data/mnist_protocol.json -> docs/mnist_protocol.png

A data file holds `series`: each a `label`, a `style` ("run": a line through every point;
"reported": markers only, for numbers quoted from the paper), the points as `x` (cycles for
RSO, epochs for SGD) and `test_accuracy` (percent), and a `source` saying where they come from
(card, JAX version, commit, command and date for our runs; the paper for its numbers).
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STYLES = {"run": {"marker": "o", "markersize": 3.5, "linestyle": "-"}, "reported": {"marker": "*", "markersize": 11, "linestyle": "none"}}


def load_series(path: str) -> list[dict]:
    """The series of a data file, each checked for the fields the figure draws.

    Raises:
      ValueError: a series lacks a field, has an unknown style, or x and test_accuracy differ in length.
    """
    with open(path) as f:
        series = json.load(f)["series"]
    for i, s in enumerate(series):
        missing = {"label", "style", "x", "test_accuracy", "source"} - set(s)
        if missing:
            raise ValueError(f"{path}: series {i} lacks {sorted(missing)}")
        if s["style"] not in STYLES:
            raise ValueError(f"{path}: series {i} ({s['label']}): style must be one of {list(STYLES)}, got {s['style']!r}")
        if len(s["x"]) != len(s["test_accuracy"]):
            raise ValueError(f"{path}: series {i} ({s['label']}): {len(s['x'])} x values, {len(s['test_accuracy'])} accuracies")
    return series


def draw(series: list[dict], out: str, title: str) -> None:
    """Test accuracy against cycles (RSO) or epochs (SGD), on a log axis up to the paper's 50."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s in series:
        color = "tab:blue" if s["label"].startswith("RSO") else "tab:orange"
        ax.plot(s["x"], s["test_accuracy"], color=color, label=s["label"], **STYLES[s["style"]])
    ax.set_xscale("log")
    ticks = [1, 2, 3, 5, 10, 20, 50]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("cycles (RSO) / epochs (SGD)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(80, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8.5)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="figures.py", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "docs", "data", "mnist_protocol.json"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "mnist_protocol.png"))
    args = p.parse_args(argv)
    with open(args.data) as f:
        title = json.load(f).get("title", "")
    draw(load_series(args.data), args.out, title)
    print(args.out)
    return args.out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
