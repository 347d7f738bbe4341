"""Figure of ``lora-limits diagnose``: ``readiness_by_layer(report) -> (Figure, plotted data)``,
``report`` being :func:`analysis.diagnose_adapters.readiness`'s result."""
from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from analysis.plotstyle import COLORS, cycle_style, legend_right, new_figure, note_empty


def readiness_by_layer(report: dict):
    """Per group, the T2 coefficient with the prompt's own bridge (solid) and with the group's
    other bridges (dashed, the control) against the layer, averaged over the layer's modules;
    1 marks what the expert's own prompt gets."""
    fig, ax = new_figure(width=5.2)
    data = {}
    for k, (group, layers) in enumerate(report["layers"].items()):
        xs = [row["layer"] for row in layers]
        paired, unpaired = [row["paired"] for row in layers], [row["unpaired"] for row in layers]
        style = cycle_style(k)
        ax.plot(xs, paired, lw=1.6, ms=3.5, label=f"{group}: own bridge", **style)
        ax.plot(xs, unpaired, lw=1.0, ms=3.0, color=style["color"], marker=style["marker"], linestyle=":",
                alpha=0.8, label=f"{group}: other bridges")
        data[group] = {"layers": xs, "paired": paired, "unpaired": unpaired}
    ax.axhline(1.0, color=COLORS["control"], lw=0.8, linestyle="--")
    ax.axhline(0.0, color=COLORS["control"], lw=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel(r"T2 coefficient $\langle \Delta k, \Delta e\rangle / \|\Delta e\|^2$")
    ax.set_title("readiness: composed prompt vs its bridge's expert prompt")
    if not data or all(not np.isfinite(v["paired"]).any() for v in data.values()):
        note_empty(ax, "no finite coefficient: every expert prompt's delta output is zero")
    legend_right(fig, title="group")
    return fig, data
