"""Figure of ``code_reuse``: composed exact match, execution accuracy and the broadcast control per
model on the ``skills`` library, one panel per style (shared helper calls vs inlined helpers).

Every bar is the mean over seeds with its 95% t-interval (``analysis.stats``) as the error bar;
with a single seed no interval exists and none is drawn. Bars and intervals: ``figures.two_hop``.
"""
from __future__ import annotations

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.figures.two_hop import bars
from analysis.plotstyle import COLORS, DASHED, DOTTED, bar_style, legend_below, new_figure
from analysis.registry import Result
from analysis.stats import t_interval

HOW = f"run `{run_command('code_reuse', 'quick')}` (or --profile paper)"
STYLE_TITLES = {"call": "shared helper calls (reusable code)", "inline": "helpers inlined (no shared code)"}


def stat(results: list[Result], fn) -> dict:
    """Mean and 95% CI over seeds of ``fn(result)``."""
    s = t_interval([fn(r) for r in results])
    return {"mean": s.mean, "low": s.low, "high": s.high, "n": s.n}


def methods_figure(results: list[Result]):
    """Per style: composed exact match (solid), execution accuracy (dotted) and the broadcast
    control (hatched) of the base, each single expert, the joint LoRA and each data-free method on
    ``skills``, and each data-free method with the composed expert; chance as a dashed line."""
    from analysis.experiments.code_reuse import data_free, value

    if not results:
        raise MissingResultsError(f"figure needs code_reuse results: {HOW}")
    styles = list(results[0].config.styles)
    methods = data_free(results)
    models = ["base", "single/semantics", "single/syntax", "single/composed", "joint/skills"] + \
        [f"{m}/skills" for m in methods] + [f"{m}/with_composed" for m in methods]
    labels = ["base", "semantics", "syntax", "composed alone", "joint"] + methods + [f"{m} +comp." for m in methods]
    fig, axes = new_figure(ncols=len(styles), width=5.6, height=3.4)
    axes, data = np.atleast_1d(axes), {}
    for j, style in enumerate(styles):
        ax = axes[j]
        series = [(what, bar_style(color, hatch, filled=filled),
                   [stat(results, lambda r, m=m, k=key: value(r, style, m, k)) for m in models])
                  for what, key, color, hatch, filled in (
                      ("composed exact match", "composed", COLORS["sum"], "", True),
                      ("composed execution accuracy", "composed_exec", COLORS["average"], "...", False),
                      ("broadcast control", "broadcast", COLORS["control"], "///", False))]
        bars(ax, labels, series)
        chance = float(np.mean([r.result["styles"][style]["chance"]["composed"] for r in results]))
        chance_b = float(np.mean([r.result["styles"][style]["chance"]["broadcast"]["composed"] for r in results]))
        ax.axhline(chance, color=COLORS["theory"], ls=DASHED, lw=0.8, label="chance, composed (1 / #programs)")
        ax.axhline(chance_b, color=COLORS["control"], ls=DOTTED, lw=1.0, label="chance, broadcast (#new / #programs)")
        ax.set_title(STYLE_TITLES[style])
        ax.set_ylabel("share of composed questions" if j == 0 else "")
        data[style] = {"models": models, "chance": chance, "chance_broadcast": chance_b,
                       **{label: stats for label, _, stats in series}}
    fig.suptitle("Semantics (syntax A) + syntax (B) adapters: tasks written in B (mean, 95% CI over seeds)")
    legend_below(fig, ncol=3)
    return fig, data
