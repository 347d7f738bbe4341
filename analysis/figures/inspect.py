"""Figures of ``lora-limits inspect``: ``fn(report) -> (Figure, plotted data)`` where
``report`` is :func:`analysis.inspect_adapters.inspect`'s result."""
from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from analysis.plotstyle import cycle_style, legend_right, new_figure, note_empty


def spectra(report: dict):
    """Normalised singular values ``sigma_i / sigma_1`` of every module's delta, per adapter
    (thin lines), with the per-adapter median over modules (thick)."""
    fig, ax = new_figure(width=5.0)
    data = {}
    for k, (name, mods) in enumerate(report["modules"].items()):
        rows = [np.asarray(m["sigma"]) / m["sigma"][0] for m in mods.values() if m["sigma"] and m["sigma"][0] > 0]
        width = max(len(r) for r in rows) if rows else 0
        grid = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            grid[i, :len(r)] = r
        style = cycle_style(k)  # colour, line style and marker: adapters differ in grey too
        for r in rows:
            ax.plot(np.arange(1, len(r) + 1), r, color=style["color"], linestyle=style["linestyle"], marker="",
                    alpha=0.15, lw=0.8)
        median = np.nanmedian(grid, axis=0) if rows else np.zeros(0)
        ax.plot(np.arange(1, width + 1), median, lw=2, ms=4, label=name, **style)
        data[name] = {"median": median.tolist(), "modules": len(rows)}
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("index i")
    ax.set_ylabel(r"$\sigma_i / \sigma_1$ of $\Delta W$")
    ax.set_title("delta spectra (median over modules)")
    if not data or all(v["modules"] == 0 for v in data.values()):
        note_empty(ax, "no module has a nonzero delta")
    legend_right(fig, title="adapter")
    return fig, data


def similarity(report: dict):
    """Adapter x adapter heatmaps: mean cosine of deltas and mean |cos| of Arrow prototypes
    over common modules (diagonal 1)."""
    names = list(report["modules"])
    keys = [("cosine", "delta cosine"), ("arrow_abs_cos", "|cos| Arrow prototypes")]
    fig, axes = new_figure(ncols=2, width=3.8, height=3.4)
    data = {"names": names}
    for ax, (key, title) in zip(axes, keys):
        M = np.eye(len(names))
        for pair, stats in report["summary"]["pairs"].items():
            a, b = pair.split("|")
            i, j = names.index(a), names.index(b)
            M[i, j] = M[j, i] = stats.get(key, np.nan)
        im = ax.imshow(M, vmin=-1 if key == "cosine" else 0, vmax=1, cmap="RdBu_r" if key == "cosine" else "viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.grid(False)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if (abs(M[i, j]) > 0.6 if key == "cosine" else M[i, j] < 0.5) else "black")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
        data[key] = M.tolist()
    return fig, data


FIGURES = [("inspect_spectra", spectra), ("inspect_similarity", similarity)]
