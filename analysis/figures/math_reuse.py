"""Figure of ``math_reuse`` (TEMPLATE-1): composed accuracy per model beside the broadcast control,
same vs different solution template, with the joint-data ceiling and chance drawn as lines.

Bars and error bars as in :mod:`analysis.figures.two_hop` (mean over seeds, 95% t-interval).
"""
from __future__ import annotations

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.figures.two_hop import bars, stat
from analysis.plotstyle import COLORS, DASHED, DOTTED, bar_style, legend_below, new_figure
from analysis.registry import Result

HOW = f"run `{run_command('math_reuse', 'quick')}` (or --profile paper)"


def methods_figure(results: list[Result]):
    """One panel per template: composed accuracy (solid) and composed-control rate (hatched) of
    the base, each single expert and every method on the skills library; the joint-data LoRA's
    composed accuracy as a dashed line (the ceiling), chance as a dotted one."""
    from analysis.experiments.math_reuse import value

    if not results:
        raise MissingResultsError(f"figure needs math_reuse results: {HOW}")
    templates = list(results[0].result["templates"])
    methods = list(results[0].config.run.methods)
    models = ["base", "single/facts", "single/procedure", "single/composed"] + [f"{m}/skills" for m in methods]
    labels = ["base", "facts", "procedure", "composed alone"] + methods
    fig, axes = new_figure(ncols=len(templates), width=4.8, height=3.4)
    axes, data = np.atleast_1d(axes), {}
    for ax, template in zip(axes, templates):
        comp = [stat(results, lambda r, m=m: value(r, template, m)) for m in models]
        ctrl = [stat(results, lambda r, m=m: value(r, template, m, "control")) for m in models]
        ceiling = stat(results, lambda r: value(r, template, "joint/skills"))
        chance = float(np.mean([r.result["templates"][template]["chance"]["composed"] for r in results]))
        bars(ax, labels, [("composed accuracy", bar_style(COLORS["sum"]), comp),
                          ("broadcast control (composed, other subjects)",
                           bar_style(COLORS["control"], "///", filled=False), ctrl)])
        ax.axhline(ceiling["mean"], color=COLORS["sgd"], ls=DASHED, lw=1.0,
                   label="joint-data LoRA {facts, procedure} (ceiling)")
        ax.axhline(chance, color=COLORS["theory"], ls=DOTTED, lw=0.8, label="chance (1 / answer range)")
        ax.set_title(f"{template} solution template")
        ax.set_ylabel("share of composed problems" if ax is axes[0] else "")
        data[template] = {"models": models, "composed": comp, "control": ctrl, "ceiling": ceiling, "chance": chance}
    fig.suptitle("Reusing {facts, procedure} LoRAs on toy math (TEMPLATE-1; mean, 95% CI over seeds)")
    legend_below(fig, ncol=2)
    return fig, data
