"""Figures of ``two_hop_reuse``: composed accuracy per method and familiarity beside the
broadcast control and chance; the library with and without the AC expert; shared templates.

Every bar is the mean over seeds with its 95% t-interval (``analysis.stats``) as the error
bar; with a single seed no interval exists and none is drawn.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.plotstyle import COLORS, DASHED, DOTTED, bar_style, is_empty, legend_below, new_figure, note_empty
from analysis.registry import Result
from analysis.stats import t_interval

HOW = f"run `{run_command('two_hop_reuse', 'quick')}` (or --profile paper)"
ACCENTS = {"average": COLORS["average"], "sum": COLORS["sum"], "arrow": COLORS["routing"],
           "joint": COLORS["sgd"], "base": COLORS["theory"], "shared": COLORS["bridge"], "with_AC": COLORS["bridge"],
           "main": COLORS["sum"], "hops": COLORS["sum"]}


# (condition, measure) -> hatch: the four template bars differ in grey, not only in colour
HATCHES = {("main", "composed"): "", ("main", "broadcast"): "///", ("shared", "composed"): "xx",
           ("shared", "broadcast"): 3 * "\\"}  # three back-slashes, as dense as ///


def _needed(results: list[Result], what: str) -> list[Result]:
    if not results:
        raise MissingResultsError(f"figure needs two_hop_reuse results ({what}): {HOW}")
    return results


def stat(results: list[Result], value: Callable[[Result], float]) -> dict:
    """Mean and 95% CI over seeds of ``value`` (per seed: mean over that seed's results)."""
    from analysis.experiments.two_hop_reuse import by_seed

    s = t_interval(by_seed(results, value).values())
    return {"mean": s.mean, "low": s.low, "high": s.high, "n": s.n}


def bars(ax, groups: Sequence[str], series: Sequence[tuple[str, dict, list[dict]]],
         empty: str = "every bar is 0 here") -> None:
    """Grouped bars: ``series`` = (label, :func:`analysis.plotstyle.bar_style` keywords, one stat
    dict per group; no error bar where no stat has an interval). A panel whose bars are all 0
    says so (``empty``)."""
    x, width = np.arange(len(groups)), 0.8 / len(series)
    for i, (label, style, stats) in enumerate(series):
        mean = np.array([s["mean"] for s in stats])
        # shares live in [0, 1]: the drawn interval is clipped there (the sidecar keeps the raw one)
        err = np.array([[s["mean"] - max(s["low"], 0), min(s["high"], 1) - s["mean"]] if np.isfinite(s["low"])
                        else [0, 0] for s in stats]).T  # (2, groups)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, mean, width, yerr=err if err.any() else None, capsize=2,
               label=label,
               error_kw={"elinewidth": 0.8}, **style)
    ax.set_xticks(x, groups, rotation=35, ha="right")
    ax.set_ylim(0, 1.05)
    if is_empty([s["mean"] for _, _, stats in series for s in stats]):
        note_empty(ax, empty)


def _formats(results: list[Result]) -> list[str]:
    from analysis.experiments.two_hop_reuse import FORMATS

    return [f for f in FORMATS if any(r.config.fmt == f for r in results)]


def methods_figure(results: list[Result]):
    """Composed accuracy (solid) vs broadcast-control rate (hatched) per model on the hops
    library, one panel per format x familiarity; chance as a dashed line."""
    from analysis.experiments.two_hop_reuse import model_value, select

    rs = _needed(select(results), "condition 'main'")
    fams = list(rs[0].result["splits"])
    methods = [m for m in rs[0].config.pipeline.methods]
    models = ["base", "single/AB", "single/BC", "single/AC", "joint/hops"] + [f"{m}/hops" for m in methods]
    labels = ["base", "AB", "BC", "AC alone", "joint AB+BC"] + methods
    fmts = _formats(rs)
    fig, axes = new_figure(ncols=len(fams), nrows=len(fmts), width=4.6, height=3.3)
    axes, data = np.atleast_1d(axes).reshape(len(fmts), len(fams)), {}
    for i, fmt in enumerate(fmts):
        for j, fam in enumerate(fams):
            sub, ax = select(rs, fmt), axes[i, j]
            comp = [stat(sub, lambda r, m=m: model_value(r, m, "composed", [fam])) for m in models]
            brd = [stat(sub, lambda r, m=m: model_value(r, m, "broadcast", [fam])) for m in models]
            chance = float(np.mean([r.result["splits"][fam]["chance"]["composed"] for r in sub]))
            chance_b = float(np.mean([r.result["splits"][fam]["chance"]["broadcast"]["AC"] for r in sub]))
            bars(ax, labels, [("composed accuracy", bar_style(COLORS["sum"]), comp),
                              ("broadcast control", bar_style(COLORS["control"], "///", filled=False), brd)])
            ax.axhline(chance, color=COLORS["theory"], ls=DASHED, lw=0.8, label="chance, composed (1 / #entities)")
            ax.axhline(chance_b, color=COLORS["control"], ls=DOTTED, lw=1.0,
                       label="chance, broadcast (#C / #entities)")
            ax.set_title(f"{fmt}, familiarity {fam}")
            ax.set_ylabel("share of questions" if j == 0 else "")
            data[f"{fmt}/{fam}"] = {"models": models, "composed": comp, "broadcast": brd, "chance": chance,
                                     "chance_broadcast": chance_b}
    fig.suptitle("Reusing {AB, BC} (+ distractors): composed accuracy vs broadcast control "
                 "(mean, 95% CI over seeds)")
    legend_below(fig, ncol=4)
    return fig, data


def libraries_figure(results: list[Result]):
    """Composed accuracy of each data-free method (and the joint LoRA) on hops vs with_AC,
    mean over F/H/R; rows: with / without distractor experts."""
    from analysis.experiments.two_hop_reuse import data_free, model_value, select

    conds = [c for c in ("main", "no_distractors") if select(results, condition=c)]
    _needed(select(results), "condition 'main'")
    fmts = _formats(results)
    fig, axes = new_figure(ncols=len(fmts), nrows=len(conds), width=4.8, height=3.2)
    axes, data = np.atleast_1d(axes).reshape(len(conds), len(fmts)), {}
    for i, cond in enumerate(conds):
        for j, fmt in enumerate(fmts):
            sub, ax = select(results, fmt, cond), axes[i, j]
            names = data_free(sub) + ["joint"]
            series = [(f"{{AB, BC{', AC' if lib == 'with_AC' else ''}}}",
                       bar_style(ACCENTS[lib], "" if lib == "hops" else "...", filled=lib == "hops"),
                       [stat(sub, lambda r, m=m, lib=lib: model_value(r, f"{m}/{lib}")) for m in names])
                      for lib in ("hops", "with_AC")]
            bars(ax, names, series)
            ax.set_title(f"{fmt}, {cond.replace('_', ' ')}")
            ax.set_ylabel("composed accuracy" if j == 0 else "")
            data[f"{cond}/{fmt}"] = {"methods": names, **{s[0]: s[2] for s in series}}
    fig.suptitle("Does the library need the target-task expert AC? (mean over F/H/R, 95% CI over seeds)")
    legend_below(fig, title="library (+ distractors in the 'main' condition)")
    return fig, data


def templates_figure(results: list[Result]):
    """Hops-library composed accuracy and broadcast rate, mean over data-free methods, per
    familiarity, without (main) and with shared templates."""
    from analysis.experiments.two_hop_reuse import data_free, model_value, select

    _needed(select(results, condition="shared"), "condition 'shared'")
    fmts = _formats(results)
    fig, axes = new_figure(ncols=len(fmts), width=4.6, height=3.3)
    axes, data = np.atleast_1d(axes), {}
    for j, fmt in enumerate(fmts):
        fams = list(select(results, fmt)[0].result["splits"])
        series = []
        for cond in ("main", "shared"):
            sub = select(results, fmt, cond)
            ms = data_free(sub)
            for what in ("composed", "broadcast"):
                stats = [stat(sub, lambda r, f=f, w=what: float(np.mean([model_value(r, f"{m}/hops", w, [f])
                                                                           for m in ms]))) for f in fams]
                label = f"{'shared templates' if cond == 'shared' else 'no shared templates'}: {what}"
                series.append((label, bar_style(ACCENTS[cond], HATCHES[cond, what], filled=what == "composed"), stats))
        bars(axes[j], fams, series)
        axes[j].set_xticks(range(len(fams)), fams, rotation=0)
        axes[j].set_xlabel("familiarity (F unseen, H half, R familiar)")
        axes[j].set_ylabel("share of questions" if j == 0 else "")
        axes[j].set_title(f"{{AB, BC}}, {fmt}")
        data[fmt] = {"familiarities": fams, **{s[0]: s[2] for s in series}}
    fig.suptitle("Shared templates and {AB, BC} reuse: mean over data-free methods (95% CI over seeds)")
    legend_below(fig, ncol=2)
    return fig, data
