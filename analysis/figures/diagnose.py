"""Figure of ``lora-limits diagnose``: ``readiness_by_layer(report) -> (Figure, plotted data)``,
``report`` being :func:`analysis.diagnose_adapters.readiness`'s result."""
from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from analysis.plotstyle import COLORS, cycle_style, legend_right, new_figure, note_empty


def readiness_by_layer(report: dict):
    """Per group against the layer (mean over the layer's modules): left, the readiness gap of
    the composed prompts (T2 coefficient with their own bridge's expert prompt minus with the
    group's other bridges'); right, the same gap for the expert prompts themselves, the
    positive control (what a composed key equal to its bridge's would get). 0: broadcast."""
    fig, axes = new_figure(ncols=2, width=3.9, height=3.3)
    data = {}
    for k, (group, layers) in enumerate(report["layers"].items()):
        xs = [row["layer"] for row in layers]
        gap, expert = [row["gap"] for row in layers], [row["expert_gap"] for row in layers]
        style = cycle_style(k)
        axes[0].plot(xs, gap, lw=1.3, ms=3.0, label=group, **style)
        axes[1].plot(xs, expert, lw=1.3, ms=3.0, **style)
        data[group] = {"layers": xs, "gap": gap, "expert_gap": expert}
    titles = ("composed prompts", "expert prompts (positive control)")
    for ax, title in zip(axes, titles):
        ax.axhline(0.0, color=COLORS["control"], lw=0.8, linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(title)
    axes[0].set_ylabel("T2 coefficient: own bridge - other bridges")
    if not data or all(not np.isfinite(v["gap"]).any() for v in data.values()):
        note_empty(axes[0], "no gap: no group has two bridges, or no expert prompt gets an edit")
    fig.suptitle("readiness of the expert per layer (0: reaches every bridge's edit alike)", fontsize=9)
    legend_right(fig, title="group")
    return fig, data
