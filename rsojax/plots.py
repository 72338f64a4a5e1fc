"""Accuracy curves: against cycles or epochs, against weight updates, against wall time."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


PANELS = (
    ("progress", "cycles (RSO) / epochs (SGD)", "linear"),
    ("weight_updates", "weight updates", "log"),
    ("wall_time_s", "wall time (s)", "linear"),
)


def plot_curves(runs: dict[str, list[dict]], path: str, title: str = "", panels=PANELS) -> None:
    """Writes a PNG with one line per run in each panel.

    Args:
      runs: label -> records with `test_accuracy` and the keys of `panels`.
      path: the PNG file to write.
      panels: (record key for the x axis, axis label, "linear" or "log") per panel.
    """

    def draw(ax, key):
        for name, records in runs.items():
            ax.plot([r[key] for r in records], [100 * r["test_accuracy"] for r in records], marker=".", label=name)

    _figure(draw, path, title, panels)


def plot_runs(runs: dict[str, list[list[dict]]], path: str, title: str = "", panels=PANELS) -> None:
    """Writes a PNG of several runs' spread: each run a thin line, the mean of a group's runs a
    thick one, a colour per group.

    Args:
      runs: group label -> its runs, each a list of records with `test_accuracy` and the keys
        of `panels` (`rsojax.records.runs_by_sweep` groups a workdir's runs by swept value).
        The mean is taken record by record, at the first run's x values: the runs of a group
        advance in lockstep.
      path: the PNG file to write.
      title: the figure's title.
      panels: (record key for the x axis, axis label, "linear" or "log") per panel.
    """

    def draw(ax, key):
        for i, (name, group) in enumerate(runs.items()):
            colour = f"C{i % 10}"
            for run in group:
                ax.plot([r[key] for r in run], [100 * r["test_accuracy"] for r in run], color=colour, lw=0.7, alpha=0.4)
            n = min(len(run) for run in group)
            mean = [100 * sum(run[j]["test_accuracy"] for run in group) / len(group) for j in range(n)]
            ax.plot([r[key] for r in group[0][:n]], mean, color=colour, lw=2.2, marker=".",
                    label=f"{name + ': ' if name else ''}mean of {len(group)} run(s)")

    _figure(draw, path, title, panels)


def _figure(draw, path: str, title: str, panels) -> None:
    """A PNG of test accuracy with a panel per x axis; `draw(ax, key)` draws a panel's lines."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    axes = axes[0]
    for ax, (key, label, scale) in zip(axes, panels):
        draw(ax, key)
        ax.set_xlabel(label)
        ax.set_xscale(scale)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
