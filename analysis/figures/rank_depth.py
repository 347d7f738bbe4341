"""Figures of ``rank_depth`` (``analysis/experiments/rank_depth.py``), drawn from its results:

- :func:`capacity_figure`: facts one rank-r adapter on one matrix recalls, per depth, beside
  RANK-1's exact-storage line ``min(r, N)`` and the Eckart-Young truncation of the required
  changes; and the trained update's distance ``||DW K - D*||_F`` from the required changes
  D* beside the EY tail of ``D*`` (a distance from one target, not a recall error: see there).
- :func:`accuracy_figure`: composed accuracy of merged/routed libraries and the joint LoRA
  against rank, one panel per (familiarity, depth), beside the base model's own held-out
  two-hop accuracy and chance.

Bands are 95% Student-t intervals over seeds, clipped to the metric's range (with 2 seeds they
are wide: t = 12.7).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.cache import MissingResultsError
from analysis.plotstyle import (COLORS, DASHDOT, DASHED, DOTTED, OPEN, SOLID, band, is_empty, legend_below,
                                new_figure, note_empty, role)
from analysis.registry import Result
from analysis.stats import t_interval

# method -> role (analysis.plotstyle.role: colour and marker); library -> line style + marker fill
METHOD_ROLES = {"average": "average", "sum": "sum", "arrow": "routing", "ties": "ties", "svd": "svd", "joint": "sgd"}
LIBRARY_STYLE = {"hops": {"linestyle": SOLID}, "with_AC": {"linestyle": DASHED, **OPEN}}
LIBRARY_LABEL = {"hops": "{AB, BC}", "with_AC": "{AB, BC, AC}"}
DEPTH_MARKERS = ("o", "s", "^", "D", "v", "P")


def _check(results: list[Result]) -> None:
    if not results:
        raise MissingResultsError("no rank_depth results: run `lora-limits run rank_depth`")


def _depth_styles(depths: list[int]) -> dict[int, dict]:
    """Colour (viridis: its lightness grows with depth, so it reads in grey too) and marker per depth."""
    cmap = colormaps["viridis"]
    return {d: {"color": cmap(x), "marker": DEPTH_MARKERS[i % len(DEPTH_MARKERS)]}
            for i, (d, x) in enumerate(zip(depths, np.linspace(0.05, 0.8, len(depths))))}


def _method_style(method: str) -> dict:
    return role(METHOD_ROLES[method]) if method in METHOD_ROLES else {"color": "grey", "marker": "*"}


def summarise(results: list[Result], value: Callable[[dict], float]) -> dict[int, dict[str, list]]:
    """``depth -> {"ranks", "mean", "low", "high", "per_seed"}`` of ``value(result)`` over seeds."""
    cells: dict[int, dict[int, list[float]]] = {}
    for r in results:
        cells.setdefault(r.result["depth"], {}).setdefault(r.result["rank"], []).append(float(value(r.result)))
    out = {}
    for depth in sorted(cells):
        ranks = sorted(cells[depth])
        stats = [t_interval(cells[depth][k]) for k in ranks]
        out[depth] = {"ranks": ranks, "mean": [s.mean for s in stats], "low": [s.low for s in stats],
                      "high": [s.high for s in stats], "per_seed": [cells[depth][k] for k in ranks]}
    return out


def _line(ax, s: dict, style: dict, label: str | None = None, clip: tuple[float, float] = (0.0, 1.0),
          spread: bool = True) -> None:
    """Mean over seeds; its spread as the 95% t-band with >= 3 seeds, else as the seeds' own
    values (small dots): with 2 seeds the t-band (t = 12.7) covers the axis and hides the data."""
    ax.plot(s["ranks"], s["mean"], linewidth=1.4, label=label, **{"linestyle": SOLID, "marker": "", **style})
    if not spread:
        return
    if min(len(v) for v in s["per_seed"]) >= 3:
        band(ax, s["ranks"], s["low"], s["high"], style["color"], clip)
    else:
        xs = [r for r, v in zip(s["ranks"], s["per_seed"]) for _ in v]
        ax.scatter(xs, np.clip([x for v in s["per_seed"] for x in v], *clip), s=9, color=style["color"],
                   alpha=0.45, linewidths=0)


def _spread_note(results: list[Result]) -> str:
    n = _seeds(results)
    return f"{n} seeds: lines are means, " + ("bands 95% t-CI" if n >= 3 else "dots single seeds")


def _rank_axis(ax, ranks: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("LoRA rank r")


def _seeds(results: list[Result]) -> int:
    return len({r.result["seed"] for r in results})


def capacity_figure(results: list[Result]):
    """Facts recalled vs rank (left) and the update's distance from the required changes D*
    beside the Eckart-Young tail of D* (right).

    The right panel is NOT a recall error: D* is one particular choice (the smallest changes
    that give each new answer a logit margin of 1, :func:`toymodels.capacity.required_changes`)
    and the LoRA is trained with cross-entropy, never towards D*. It stores the facts with
    other, larger-margin changes, so its distance from D* stays near 1 (the distance of no
    update at all) even where it recalls every fact; the EY tail is the floor no rank-r
    update can go below."""
    _check(results)
    n = results[0].result["capacity"]["n_facts"]
    trained = summarise(results, lambda x: x["capacity"]["recalled_trained"])
    construction = summarise(results, lambda x: x["capacity"]["recalled_construction"])
    rel = lambda key: lambda x: x["capacity"][key] / x["capacity"]["norm_required"]  # noqa: E731
    err, tail = summarise(results, rel("error_trained")), summarise(results, rel("ey_tail"))
    styles = _depth_styles(list(trained))
    ranks = sorted({r.result["rank"] for r in results})
    fig, (left, right) = new_figure(ncols=2, width=4.6, height=3.6)
    left.plot(ranks, [min(r, n) for r in ranks], color=COLORS["theory"], linestyle=DASHDOT, marker="", linewidth=1.6)
    left.axhline(n, color=COLORS["control"], linestyle=DOTTED, linewidth=1)
    right.axhline(1.0, color=COLORS["control"], linestyle=DOTTED, linewidth=1)
    for depth, style in styles.items():
        _line(left, trained[depth], style, clip=(0, n))
        _line(left, construction[depth], {"color": style["color"], "linestyle": DASHED}, spread=False)
        _line(right, err[depth], style, clip=(1e-3, np.inf))
        positive = [i for i, v in enumerate(tail[depth]["mean"]) if v > 0]  # the tail is 0 at r >= rank(D*)
        right.plot([tail[depth]["ranks"][i] for i in positive], [tail[depth]["mean"][i] for i in positive],
                   color=style["color"], linestyle=DASHED, marker="", linewidth=1.4)
    left.set_ylim(0, n * 1.05)
    left.set_ylabel(f"facts recalled (argmax; N = {n} edits)")
    left.set_title("facts one adapter stores")
    right.set_yscale("log")
    right.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.2, 0.5, 1, 2, 5: not 2 x 10^-1
    right.yaxis.set_minor_formatter(NullFormatter())
    right.set_ylabel(r"$\|\Delta W K - D^*\|_F \,/\, \|D^*\|_F$")
    right.set_title("update vs the required changes D*\n(not a recall error; EY tail is 0 for r >= rank D*)",
                    fontsize=10)
    right.text(0.97, 0.97, "D*: smallest changes giving each new answer a\nlogit margin of 1. The LoRA is trained "
               "with\ncross-entropy, not towards D*: it stores facts\nwith other, larger-margin changes.",
               transform=right.transAxes, ha="right", va="top", fontsize=6.5, color=COLORS["theory"])
    for ax in (left, right):
        _rank_axis(ax, ranks)
    handles = [Line2D([], [], linestyle="none", label=f"depth L = {d}", **style) for d, style in styles.items()]
    handles += [Line2D([], [], color=COLORS["control"], linestyle=SOLID, label="trained LoRA (marker: depth)"),
                Line2D([], [], color=COLORS["control"], linestyle=DASHED,
                       label="EY truncation of D*: facts it recalls (left), its distance (right)"),
                Line2D([], [], color=COLORS["theory"], linestyle=DASHDOT, linewidth=1.6,
                       label="RANK-1 exact storage min(r, N) (argmax recall may exceed it)"),
                Line2D([], [], color=COLORS["control"], linestyle=DOTTED,
                       label="all N facts (left); distance of no update, DW = 0 (right)")]
    legend_below(fig, handles, ncol=2, fontsize=7)
    fig.suptitle(f"One rank-r LoRA on the last block's mlp_out vs RANK-1 ({_spread_note(results)})", fontsize=10)
    data = {"n_facts": n, "ranks": ranks, "bound": [min(r, n) for r in ranks],
            "recalled_trained": trained, "recalled_construction": construction,
            "relative_error_trained": err, "relative_ey_tail": tail}
    return fig, _json_keys(data)


def _methods(results: list[Result]) -> list[str]:
    names = next(iter(results[0].result["reuse"].values()))["models"]
    return sorted({n.split("/")[0] for n in names if "/" in n and not n.startswith("single/")},
                  key=lambda m: (m == "joint", m))


def accuracy_figure(results: list[Result]):
    """Composed accuracy vs rank: rows = familiarity, columns = depth."""
    _check(results)
    fams = list(results[0].result["reuse"])
    depths = sorted({r.result["depth"] for r in results})
    ranks = sorted({r.result["rank"] for r in results})
    methods = _methods(results)
    fig, axes = new_figure(ncols=len(depths), nrows=len(fams), width=3.3, height=2.8)
    axes = np.asarray(axes).reshape(len(fams), len(depths))
    base = summarise(results, lambda x: x["base"]["test_id"])
    data: dict = {"ranks": ranks, "depths": depths, "familiarities": fams, "base_test_id": base, "curves": {}}
    for i, fam in enumerate(fams):
        for j, depth in enumerate(depths):
            ax, rows = axes[i, j], [r for r in results if r.result["depth"] == depth]
            held_out = float(np.mean(base[depth]["mean"]))
            ax.axhline(held_out, color=COLORS["theory"], linestyle=DOTTED, linewidth=1.4,
                       label="base: held-out two-hop chains (familiar)")
            chance = float(np.mean([r.result["reuse"][fam]["chance"] for r in rows]))
            ax.axhline(chance, color=COLORS["control"], linestyle=SOLID, linewidth=1.0,
                       label="chance (T2, one-layer model: {AB, BC} merges stay here)")
            values = []
            for method in methods:
                for lib, style in LIBRARY_STYLE.items():
                    s = summarise(rows, lambda x: x["reuse"][fam]["models"][f"{method}/{lib}"]["composed"])[depth]
                    _line(ax, s, {**_method_style(method), **style}, spread=lib == "hops",
                          label=f"{method} {LIBRARY_LABEL[lib]}")
                    data["curves"][f"{fam}/L{depth}/{method}/{lib}"] = s
                    values += s["mean"]
            control = summarise(rows, lambda x: x["reuse"][fam]["models"]["average/hops"]["broadcast"]["composed"])
            _line(ax, control[depth], {"color": COLORS["average"], "linestyle": DASHDOT}, spread=False,
                  label="average {AB, BC}: control (other subjects answered with a new C)")
            data["curves"][f"{fam}/L{depth}/average/hops/broadcast_control"] = control[depth]
            if is_empty(values):
                note_empty(ax, "every model: composed accuracy 0 at every rank")
            ax.set_ylim(-0.03, 1.03)
            _rank_axis(ax, ranks)
            ax.set_title(f"{fam} split, depth L = {depth} (base {held_out:.0%})", fontsize=9)
            if j == 0:
                ax.set_ylabel("composed exact match")
    legend_below(fig, ncol=3, fontsize=7, title="colour + marker: method; solid, filled: library {AB, BC}; "
                 "dashed, open: {AB, BC, AC}")
    fmt = results[0].result.get("fmt", "?")
    fig.suptitle(f"Two-hop reuse vs LoRA rank ({fmt} format; {_spread_note(results)})", fontsize=10)
    return fig, _json_keys(data)


def _json_keys(data):
    """Integer dict keys (depths) as strings, so the sidecar round-trips through JSON."""
    if isinstance(data, dict):
        return {str(k): _json_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_json_keys(v) for v in data]
    return data
