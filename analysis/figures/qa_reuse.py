"""Figure of ``qa_reuse``: per split (F / H / R / OOD), composed exact match of the base, the
single experts, the joint LoRA and each reuse method of the ``hops`` library, with its control
(max of the base's composed accuracy and the model's AC broadcast rate) as a marker; right
panel: the specificity margin P(gold) - P(another composed answer) of the same models.
Several results (seeds) are averaged; the sidecar holds every plotted number.
"""
from __future__ import annotations

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.plotstyle import COLORS, bar_style, is_empty, legend_below, new_figure, note_empty
from analysis.registry import Result

SPLIT_STYLE = {"F": (COLORS["construction"], ""), "H": (COLORS["average"], "///"), "R": (COLORS["routing"], "..."),
               "OOD": (COLORS["sum"], "xx")}


def _mean(values) -> float:
    values = [np.nan if v is None else v for v in values]
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")


def qa_figure(results: list[Result]):
    """``(figure, plotted numbers)``."""
    from analysis.experiments.qa_reuse import control, margin, split_score

    if not results:
        raise MissingResultsError(f"figure needs qa_reuse results: run `{run_command('qa_reuse', 'quick')}`")
    first = results[0].result["protocol"]
    models = [m for m in first["models"] if not m.endswith("/with_AC")]
    splits = [sp for sp in SPLIT_STYLE if any(split_score(r, "base", sp) is not None for r in results)]
    fig, axes = new_figure(ncols=2, width=5.4, height=3.6)
    data = {"models": models, "splits": splits, "seeds": [r.result["seed"] for r in results], "panels": {}}
    x, width = np.arange(len(models)), 0.8 / max(len(splits), 1)
    for ax, what in zip(axes, ("composed", "specificity")):
        panel = {}
        for i, sp in enumerate(splits):
            def get(r, m):
                s = split_score(r, m, sp)
                return None if s is None else (s["composed"] if what == "composed" else margin(s))
            values = [_mean([get(r, m) for r in results]) for m in models]
            pos = x + (i - (len(splits) - 1) / 2) * width
            color, hatch = SPLIT_STYLE[sp]
            ax.bar(pos, values, width, label=f"split {sp}" if what == "composed" else None, **bar_style(color, hatch))
            panel[sp] = {"values": values}
            if what == "composed":
                ctl = [_mean([control(r, m, sp) if split_score(r, m, sp) else None for r in results]) for m in models]
                ax.scatter(pos, ctl, marker="x", color=COLORS["theory"], s=14, zorder=3,
                           label="control (max of base, broadcast)" if i == 0 else None)
                panel[sp]["control"] = ctl
        data["panels"][what] = panel
        if is_empty([v for p in panel.values() for v in p["values"]]):
            note_empty(ax, "every value is zero or missing here")
        ax.set_xticks(x, models, rotation=40, ha="right")
        ax.axhline(0.0, color=COLORS["control"], linewidth=0.6)
        ax.set_title("composed exact match" if what == "composed" else "specificity margin")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("share / probability")
    model = results[0].result["model"].split(" (")[0]
    fig.suptitle(f"{model}: history/geography QA reuse, library {{AB, BC}}; "
                 f"{len(results)} result(s) averaged", fontsize=10)
    legend_below(fig, ncol=5)
    return fig, data
