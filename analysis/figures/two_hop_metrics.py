"""Figures of ``two_hop_reuse`` on the issue-12 metrics, all on the true composed prompts of the
``main`` condition: one-hop retention against composition per method, conditional composition
(with how many questions it counts), specificity (P of the right vs a wrong new answer) and
out-of-distribution subjects (split O) against in-distribution ones (R, H).

Means are over seeds with 95% t-intervals (:func:`analysis.figures.two_hop.stat`), clipped to
[0, 1] where drawn; conditional composition is pooled over seeds (right / n), since a seed
may count no question at all.
"""
from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from analysis.experiments.two_hop_read import conditional, data_free, model_value, select, splits_of
from analysis.figures.two_hop import ACCENTS, _formats, _needed, bars, stat
from analysis.plotstyle import COLORS, OPEN, bar_style, is_empty, legend_below, new_figure, note_empty, role
from analysis.registry import Result

# method -> plot role (colour + marker), so a method looks the same in every figure
ROLES = {"average": "average", "sum": "sum", "ties": "ties", "arrow": "routing", "joint": "sgd", "svd": "svd",
         "dare": "construction", "factor_average": "bridge", "cat": "control", "task_arithmetic": "theory"}
LIBRARIES = {"hops": "{AB, BC}", "with_AC": "{AB, BC, AC}"}
SPLIT_STYLE = {"R": bar_style(COLORS["sum"]), "H": bar_style(COLORS["average"], "..."),
               "F": bar_style(COLORS["control"], "///", filled=False), "O": bar_style(COLORS["bridge"], "xx")}
SPLIT_NAMES = {"R": "R (familiar, in distribution)", "H": "H (one hop familiar)", "F": "F (unseen entities)",
               "O": "O (subjects never in a pretraining chain)"}
FORCED = "P after the gold bridge B: the second hop"


def _grid(results: list[Result], what: str):
    rs = _needed(select(results), what)
    fmts, fams = _formats(rs), splits_of(rs)
    fig, axes = new_figure(ncols=len(fams), nrows=len(fmts), width=4.4, height=3.4)
    return rs, fmts, fams, fig, np.atleast_1d(axes).reshape(len(fmts), len(fams))


def _absent(ax, sub: list[Result], fmt: str, fam: str) -> bool:
    """True (and the panel says so) when no ``fmt`` result has split ``fam``."""
    if fam in splits_of(sub):
        return False
    ax.set_title(f"{fmt}, split {fam}")
    ax.set_xticks([])
    note_empty(ax, f"no split {fam} in the {fmt} results")
    return True


def _clip(s: dict) -> list[float]:
    """[below, above] error-bar lengths of a stat, clipped to [0, 1] (none without an interval)."""
    if not np.isfinite(s["low"]):
        return [0.0, 0.0]
    return [s["mean"] - max(s["low"], 0.0), min(s["high"], 1.0) - s["mean"]]


def retention_figure(results: list[Result]):
    """Per method and library: one-hop retention (x) against composed accuracy (y), one panel per
    format x split. Retention: the AB and BC facts the merged / routed model still answers."""
    rs, fmts, fams, fig, axes = _grid(results, "condition 'main'")
    names, data = data_free(rs) + ["joint"], {}
    for i, fmt in enumerate(fmts):
        for j, fam in enumerate(fams):
            sub, ax, panel = select(rs, fmt), axes[i, j], {}
            if _absent(ax, sub, fmt, fam):
                continue
            for lib in LIBRARIES:
                for m in names:
                    x = stat(sub, lambda r, m=m: model_value(r, f"{m}/{lib}", "retention", [fam]))
                    y = stat(sub, lambda r, m=m: model_value(r, f"{m}/{lib}", "composed", [fam]))
                    style = role(ROLES[m], **({} if lib == "hops" else OPEN))
                    ax.errorbar([x["mean"]], [y["mean"]], xerr=np.array([_clip(x)]).T, yerr=np.array([_clip(y)]).T,
                                ls="none", capsize=2, elinewidth=0.7, markersize=6, **style)
                    panel[f"{m}/{lib}"] = {"retention": x, "composed": y}
            ax.set_xlim(-0.03, 1.03)
            ax.set_ylim(-0.03, 1.05)
            ax.set_title(f"{fmt}, split {fam}")
            ax.set_xlabel("one-hop retention (AB, BC facts answered)")
            ax.set_ylabel("composed accuracy" if j == 0 else "")
            if is_empty([v["composed"]["mean"] for v in panel.values()]):
                note_empty(ax, "composed accuracy is 0 for every model here")
            data[f"{fmt}/{fam}"] = panel
    handles = [Line2D([], [], ls="none", label=m, **role(ROLES[m])) for m in names]
    handles += [Line2D([], [], ls="none", marker="h", color="black", label=f"{LIBRARIES['hops']}: filled"),
                Line2D([], [], ls="none", marker="h", color="black", label=f"{LIBRARIES['with_AC']}: open", **OPEN)]
    fig.suptitle("Does reuse compose once it keeps both hops? Retention vs composition after merge / route "
                 "(mean, 95% CI over seeds)")
    legend_below(fig, handles=handles, ncol=len(handles))
    return fig, data


def _annotate_n(ax, counts: list[int]) -> None:
    """Write each bar's question count above it, in bar order."""
    patches = [p for c in ax.containers for p in getattr(c, "patches", ())]
    for p, n in zip(patches, counts):
        ax.text(p.get_x() + p.get_width() / 2, p.get_height() + 0.02, f"{n}", ha="center", va="bottom", fontsize=6,
                rotation=90)


def conditional_figure(results: list[Result]):
    """Composed accuracy over the questions whose two hops the same model answers, per method
    and library, pooled over seeds; the number above each bar is how many questions that is."""
    rs, fmts, fams, fig, axes = _grid(results, "condition 'main'")
    names, data = data_free(rs) + ["joint"], {}
    for i, fmt in enumerate(fmts):
        for j, fam in enumerate(fams):
            sub, ax, series, counts = select(rs, fmt), axes[i, j], [], []
            if _absent(ax, sub, fmt, fam):
                continue
            for lib, label in LIBRARIES.items():
                pooled = [tuple(map(sum, zip(*(conditional(r, f"{m}/{lib}", [fam]) for r in sub)))) for m in names]
                stats = [{"mean": k / n if n else 0.0, "low": np.nan, "high": np.nan, "right": k, "n": n}
                         for k, n in pooled]
                series.append((label, bar_style(ACCENTS[lib], "" if lib == "hops" else "...", filled=lib == "hops"),
                               stats))
                counts += [s["n"] for s in stats]
            none = "no model answers both hops of any question here (n = 0 for every bar)"
            bars(ax, names, series, none if not any(counts) else "every model with n > 0 answers none of them")
            _annotate_n(ax, counts)
            ax.set_ylim(0, 1.2)  # room for the counts above bars at 1
            ax.set_title(f"{fmt}, split {fam}")
            ax.set_ylabel("composed | both hops answered" if j == 0 else "")
            data[f"{fmt}/{fam}"] = {"models": names, **{s[0]: s[2] for s in series}}
    fig.suptitle("Knows both hops, combines them? Composed accuracy over the questions whose AB and BC facts the "
                 "model answers\n(pooled over seeds; the number on a bar: how many such questions; 0: none)")
    legend_below(fig, title="library")
    return fig, data


def specificity_figure(results: list[Result]):
    """On the true composed prompts: P(right new answer C_i) against the mean P(another
    question's new answer C_j) per model on the hops library (broadcast measured like for like)."""
    rs, fmts, fams, fig, axes = _grid(results, "condition 'main'")
    models = ["base", "joint/hops"] + [f"{m}/hops" for m in data_free(rs)]
    labels = ["base", "joint AB+BC"] + data_free(rs)
    data = {}
    for i, fmt in enumerate(fmts):
        for j, fam in enumerate(fams):
            sub, ax = select(rs, fmt), axes[i, j]
            if _absent(ax, sub, fmt, fam):
                continue
            right = [stat(sub, lambda r, m=m: model_value(r, m, "right", [fam])) for m in models]
            wrong = [stat(sub, lambda r, m=m: model_value(r, m, "wrong", [fam])) for m in models]
            bars(ax, labels, [("P(right new answer C_i)", bar_style(COLORS["sum"]), right),
                              ("mean P(another question's new answer C_j)",
                               bar_style(COLORS["control"], "///", filled=False), wrong)])
            ax.set_title(f"{fmt}, split {fam}" + (f"\n({FORCED})" if fmt == "cot" else ""))
            ax.set_ylabel("probability on the true prompt" if j == 0 else "")
            data[f"{fmt}/{fam}"] = {"models": models, "right": right, "wrong": wrong}
    fig.suptitle("Specificity of {AB, BC} reuse on the true composed prompts: composition raises only the right "
                 "answer, broadcast raises both (mean, 95% CI over seeds)")
    legend_below(fig, ncol=2)
    return fig, data


def ood_figure(results: list[Result]):
    """Composed accuracy of {AB, BC} reuse per method on OOD subjects (split O) beside the
    in-distribution splits R and H; one panel per format. Without split O in the results the
    panel title says so (the quick grid runs F, H, R)."""
    rs = _needed(select(results), "condition 'main'")
    fmts = _formats(rs)
    fig, axes = new_figure(ncols=len(fmts), width=5.2, height=3.6)
    axes, data = np.atleast_1d(axes), {}
    models = ["joint/hops"] + [f"{m}/hops" for m in data_free(rs)]
    labels = ["joint AB+BC"] + data_free(rs)
    for j, fmt in enumerate(fmts):
        sub = select(rs, fmt)
        fams = [f for f in ("R", "H", "O") if f in splits_of(sub)]
        series = [(SPLIT_NAMES[f], SPLIT_STYLE[f], [stat(sub, lambda r, m=m, f=f: model_value(r, m, "composed", [f]))
                                                    for m in models]) for f in fams]
        bars(axes[j], labels, series)
        missing = "" if "O" in fams else "\nsplit O not in these results (see REUSE-OOD in the report)"
        axes[j].set_title(f"{{AB, BC}} reuse, {fmt}{missing}")
        axes[j].set_ylabel("composed accuracy" if j == 0 else "")
        data[fmt] = {"models": models, **{f: s[2] for f, s in zip(fams, series)}}
    fig.suptitle("Out of distribution (O: subjects whose facts were pretrained but never started a chain) vs in "
                 "distribution (mean, 95% CI over seeds)")
    legend_below(fig, title="split")
    return fig, data
