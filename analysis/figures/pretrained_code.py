"""Figure of ``pretrained_code``: the pretrained base's few-shot exact match on the code base task
per language and seed (left), beside CODE-PRE-0's threshold, and the gold program's mean
log-probability per token (right). Every bar is one seed's number; no average is drawn, so two
seeds are shown as two bars (the sidecar holds every plotted number).
"""
from __future__ import annotations

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.plotstyle import (COLORS, DASHED, HATCHES, bar_style, cycle_style, is_empty, legend_below, new_figure,
                                note_empty)
from analysis.registry import Result


def code_base_figure(results: list[Result]):
    """``(figure, plotted numbers)``."""
    from analysis.experiments.pretrained_code import THRESHOLD, languages
    from toymodels.tasks.code_langs import NAMES

    if not results:
        raise MissingResultsError("figure needs pretrained_code results: run "
                                  f"`{run_command('pretrained_code', 'quick')}`")
    results = sorted(results, key=lambda r: r.config.seed)
    langs = languages(results[0])
    seeds = [r.result["seed"] for r in results]
    fig, axes = new_figure(ncols=2, width=3.6, height=3.2)
    x, width = np.arange(len(langs)), 0.8 / len(results)
    data = {"languages": langs, "seeds": seeds, "threshold": THRESHOLD, "panels": {}}
    for ax, key, title in zip(axes, ("exact", "logprob_per_token"),
                              ("exact match", "gold log-prob per token")):
        panel = {}
        for i, r in enumerate(results):
            values = [r.result["scores"]["languages"][lang][key] for lang in langs]
            color = cycle_style(i)["color"]
            ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=f"seed {seeds[i]}",
                   **bar_style(color, HATCHES[i % len(HATCHES)]))
            panel[f"seed {seeds[i]}"] = values
        data["panels"][key] = panel
        if is_empty([v for vs in panel.values() for v in vs]):
            note_empty(ax, "every value is zero: the base writes none of the tasks exactly")
        ax.set_xticks(x, [NAMES[lang] for lang in langs])
        ax.set_title(title)
    axes[0].axhline(THRESHOLD, color=COLORS["theory"], ls=DASHED, lw=0.8, label="CODE-PRE-0 threshold (convention)")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("share of tasks")
    n = results[0].result["scores"]["n_programs"]
    model = results[0].result["model"].split(" (")[0]
    fig.suptitle(f"{model}: description -> program, few-shot, {n} tasks per seed", fontsize=10)
    legend_below(fig, ncol=len(results) + 1)
    return fig, data
