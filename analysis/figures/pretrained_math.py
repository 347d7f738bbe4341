"""Figure of ``pretrained_math``: left, the gate MATH-PRE-0 (the base's few-shot exact match on
stated-facts problems, one bar per seed, beside its threshold); right, one panel per template
over the seeds whose base passed the gate (none passed: the gate panel alone): composed accuracy (solid) and broadcast-control rate (hatched) of the base, each single expert,
the joint-data LoRA and every method on the skills library (mean, 95% CI over seeds, as
:mod:`analysis.figures.math_reuse`).
"""
from __future__ import annotations

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.figures.two_hop import bars, stat
from analysis.plotstyle import (COLORS, DASHED, HATCHES, bar_style, cycle_style, is_empty, legend_below, new_figure,
                                note_empty)
from analysis.registry import Result


def math_pre_figure(results: list[Result]):
    """``(figure, plotted numbers)``."""
    from analysis.experiments.math_reuse import value
    from analysis.experiments.pretrained_math import GATE

    if not results:
        raise MissingResultsError("figure needs pretrained_math results: run "
                                  f"`{run_command('pretrained_math', 'quick')}`")
    results = sorted(results, key=lambda r: r.config.seed)
    ran = [r for r in results if r.result["templates"]]  # seeds whose base passed the gate
    templates = list(ran[0].result["templates"]) if ran else []
    methods = list(results[0].config.run.methods)
    models = ["base", "single/facts", "single/procedure", "joint/skills"] + [f"{m}/skills" for m in methods]
    labels = ["base", "facts", "procedure", "joint"] + methods
    fig, axes = new_figure(ncols=1 + len(templates), width=3.9, height=3.4)
    axes = np.atleast_1d(axes)  # one panel (the gate alone) comes back unwrapped
    seeds = [r.config.seed for r in results]
    gate = [r.result["protocol"]["gate"]["exact"] for r in results]
    for i, (s, v) in enumerate(zip(seeds, gate)):
        axes[0].bar(i, v, 0.7, **bar_style(cycle_style(0)["color"], HATCHES[i % len(HATCHES)]))
    axes[0].axhline(GATE, color=COLORS["theory"], ls=DASHED, lw=0.8, label="MATH-PRE-0 threshold (convention)")
    axes[0].set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("gate: base, facts stated")
    axes[0].set_ylabel("share of problems")
    if is_empty(gate):
        note_empty(axes[0], "every value is zero: the base answers none of the stated-facts problems")
    data = {"seeds": seeds, "gate": gate, "threshold": GATE, "models": models}
    for ax, template in zip(axes[1:], templates):
        comp = [stat(ran, lambda r, m=m: value(r, template, m)) for m in models]
        ctrl = [stat(ran, lambda r, m=m: value(r, template, m, "control")) for m in models]
        bars(ax, labels, [("composed accuracy (greedy final answer)", bar_style(COLORS["sum"]), comp),
                          ("broadcast control (same question, unseen subjects)",
                           bar_style(COLORS["control"], "///", filled=False), ctrl)])
        ax.set_title(f"{template} solution template")
        data[template] = {"composed": comp, "control": ctrl}
    model = results[0].result["model"].split(" (")[0]
    fig.suptitle(f"{model}: English math problems, facts + procedure LoRAs (TEMPLATE-1-pre)", fontsize=10)
    if not ran:
        axes[0].set_title("gate: base, facts stated (no seed passed: no LoRA trained)", fontsize=9)
    legend_below(fig, ncol=3)
    return fig, data
