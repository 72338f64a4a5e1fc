"""The docs' figures, drawn from recorded results (docs/data/*.json), never by hand.

    python experiments/figures.py            # docs/data/mnist_protocol.json -> docs/mnist_protocol.png
    python experiments/figures.py --data docs/data/many_runs.json --out docs/many_runs.png
    python experiments/figures.py --data docs/data/many_runs.json --out docs/many_runs.png --collect

A data file holds either `series` or `panels`.

`series`, curves over training: each a `label`, a `style` ("run": a line through every point;
"reported": markers only, for numbers quoted from the paper), the points as `x` (cycles for
RSO, epochs for SGD) and `test_accuracy` (percent), and a `source` saying where they come from
(card, JAX version, commit, command and date for our runs; the paper for its numbers).

`panels`, the final test accuracy of several runs (`--seeds`, `--sweep`) side by side: each
panel a `title`, its `commands` and `arms`; each arm a `label`, the `workdir` its runs were
trained in, `where` (the runs' labels to keep, such as {"sigma_scale": 0.5} or {"seed": [0, 1]};
{} keeps all) and `runs` (each run's labels and `test_accuracy`, as the workdir's summary.json
gives them) with the `source` (device, JAX version, precision). `--collect` fills `runs` and
`source` from the workdirs; without it the figure is drawn from the file alone. Runs of the same
seed and init seed in neighbouring arms are joined by a line (paired comparisons).
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rsojax.records import spread  # noqa: E402

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


def matches(run: dict, where: dict) -> bool:
    """Whether a run's labels take the values of `where` (a value, or a list of allowed values)."""
    return all(run.get(k) in (v if isinstance(v, list) else [v]) for k, v in where.items())


def collect(data: dict, base: str) -> dict:
    """`data` with each arm's `runs` and `source` read from its workdir's summary.json
    (a relative workdir is taken from `base`).

    Raises:
      ValueError: a workdir has no summary.json of several runs, or an arm keeps no run.
    """
    for panel in data["panels"]:
        for arm in panel["arms"]:
            path = os.path.join(base, arm["workdir"], "summary.json")
            if not os.path.isfile(path):
                raise ValueError(f"arm {arm['label']!r}: no {path}: train its runs first ({panel['commands']})")
            with open(path) as f:
                summary = json.load(f)
            if "runs" not in summary:
                raise ValueError(f"arm {arm['label']!r}: {path} holds a single run, not several (--seeds, --sweep)")
            runs = [r for r in summary["runs"] if matches(r, arm.get("where", {}))]
            if not runs:
                raise ValueError(f"arm {arm['label']!r}: no run of {path} has {arm['where']}")
            arm["runs"] = [{k: v for k, v in r.items() if k != "params_sha256"} for r in runs]
            arm["source"] = {k: summary[k] for k in ("device", "jax_version", "precision")}
    return data


def draw_panels(data: dict, out: str) -> None:
    """Each panel's arms side by side: a dot per run, the mean and one standard deviation."""
    panels = data["panels"]
    widths = [max(len(p["arms"]), 2) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 + 1.3 * sum(widths), 4.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, panel in zip(axes[0], panels):
        arms = panel["arms"]
        for i, arm in enumerate(arms):
            if not arm.get("runs"):
                raise ValueError(f"arm {arm['label']!r} has no runs: --collect them from {arm['workdir']}")
            acc = [100 * r["test_accuracy"] for r in arm["runs"]]
            mean, std = (spread(acc)[k] for k in ("mean", "std"))
            ax.plot([i] * len(acc), acc, "o", color="tab:blue", alpha=0.6, markersize=5)
            ax.errorbar(i + 0.18, mean, yerr=std, fmt="s", color="black", capsize=4, markersize=5)
            ax.annotate(f"{mean:.2f} ± {std:.2f}", (i + 0.26, mean), fontsize=8, va="center")
            if i:  # the same seeds in the arm before: a paired comparison
                before = {(r.get("seed"), r.get("init_seed")): r["test_accuracy"] for r in arms[i - 1]["runs"]}
                for r in arm["runs"]:
                    if (r.get("seed"), r.get("init_seed")) in before:
                        ax.plot([i - 1, i], [100 * before[r.get("seed"), r.get("init_seed")], 100 * r["test_accuracy"]],
                                color="gray", alpha=0.35, linewidth=0.8)
        ax.set_xticks(range(len(arms)), [a["label"] for a in arms])
        ax.set_xlim(-0.5, len(arms) - 0.05)  # room for the last arm's mean on its right
        ax.set_title(panel["title"], fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle(data.get("title", ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="figures.py", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "docs", "data", "mnist_protocol.json"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "mnist_protocol.png"))
    p.add_argument("--collect", action="store_true",
                   help="panels: read each arm's runs from its workdir (relative to the current directory) into --data first")
    args = p.parse_args(argv)
    with open(args.data) as f:
        data = json.load(f)
    if "panels" in data:
        if args.collect:
            data = collect(data, os.getcwd())
            with open(args.data + ".tmp", "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.replace(args.data + ".tmp", args.data)
        draw_panels(data, args.out)
    else:
        if args.collect:
            p.error(f"--collect: {args.data} holds series, not panels of runs")
        draw(load_series(args.data), args.out, data.get("title", ""))
    print(args.out)
    return args.out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
