"""Figures of ``rank_depth`` (``analysis/experiments/rank_depth.py``), drawn from its results:

- :func:`capacity_figure`: facts one rank-r adapter on one matrix recalls, per depth, beside
  RANK-1's exact-storage line ``min(r, N)`` and the Eckart-Young truncation of the required
  changes; and the trained update's error ``||DW K - D*||_F`` beside the EY tail of ``D*``.
- :func:`accuracy_figure`: composed accuracy of merged/routed libraries and the joint LoRA
  against rank, one panel per (familiarity, depth), beside the base model's own held-out
  two-hop accuracy and chance.

Bands are 95% Student-t intervals over seeds, clipped to the axis range (with 2 seeds they
are wide: t = 12.7).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D

from analysis.cache import MissingResultsError
from analysis.plotstyle import COLORS, new_figure
from analysis.registry import Result
from analysis.stats import t_interval

METHOD_COLORS = {"average": COLORS["average"], "sum": COLORS["sum"], "arrow": COLORS["routing"],
                 "ties": "#17becf", "svd": "#bcbd22", "joint": COLORS["sgd"]}
LIBRARY_STYLE = {"hops": "-", "with_AC": "--"}
LIBRARY_LABEL = {"hops": "{AB, BC}", "with_AC": "{AB, BC, AC}"}


def _check(results: list[Result]) -> None:
    if not results:
        raise MissingResultsError("no rank_depth results: run `lora-limits run rank_depth`")


def _depth_colors(depths: list[int]) -> dict[int, tuple]:
    cmap = colormaps["viridis"]
    return {d: cmap(x) for d, x in zip(depths, np.linspace(0.05, 0.8, len(depths)))}


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


def _line(ax, s: dict, color, style: str = "-", marker: str | None = "o", label: str | None = None,
          clip: tuple[float, float] = (0.0, 1.0), spread: bool = True) -> None:
    """Mean over seeds; its spread as the 95% t-band with >= 3 seeds, else as the seeds' own
    values (small dots): with 2 seeds the t-band (t = 12.7) covers the axis and hides the data."""
    ax.plot(s["ranks"], s["mean"], style, color=color, marker=marker, markersize=4, linewidth=1.4, label=label)
    if not spread:
        return
    if min(len(v) for v in s["per_seed"]) >= 3:
        ax.fill_between(s["ranks"], np.clip(s["low"], *clip), np.clip(s["high"], *clip), color=color,
                        alpha=0.15, linewidth=0)
    else:
        xs = [r for r, v in zip(s["ranks"], s["per_seed"]) for _ in v]
        ax.scatter(xs, np.clip([x for v in s["per_seed"] for x in v], *clip), s=9, color=color, alpha=0.45,
                   linewidths=0)


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
    """Facts recalled vs rank (left) and residual error vs the Eckart-Young tail (right)."""
    _check(results)
    n = results[0].result["capacity"]["n_facts"]
    trained = summarise(results, lambda x: x["capacity"]["recalled_trained"])
    construction = summarise(results, lambda x: x["capacity"]["recalled_construction"])
    rel = lambda key: lambda x: x["capacity"][key] / x["capacity"]["norm_required"]  # noqa: E731
    err, tail = summarise(results, rel("error_trained")), summarise(results, rel("ey_tail"))
    colors = _depth_colors(list(trained))
    ranks = sorted({r.result["rank"] for r in results})
    fig, (left, right) = new_figure(ncols=2, width=4.6, height=3.6)
    left.plot(ranks, [min(r, n) for r in ranks], color=COLORS["theory"], linewidth=1.6)
    left.axhline(n, color=COLORS["control"], linestyle=":", linewidth=1)
    for depth, color in colors.items():
        _line(left, trained[depth], color, clip=(0, n))
        _line(left, construction[depth], color, style="--", marker=None, spread=False)
        _line(right, err[depth], color, clip=(1e-3, np.inf))
        positive = [i for i, v in enumerate(tail[depth]["mean"]) if v > 0]  # the tail is 0 at r >= rank(D*)
        right.plot([tail[depth]["ranks"][i] for i in positive], [tail[depth]["mean"][i] for i in positive], "--",
                   color=color, linewidth=1.4)
    left.set_ylim(0, n * 1.05)
    left.set_ylabel(f"facts recalled (argmax; N = {n} edits)")
    left.set_title("facts one adapter stores")
    right.set_yscale("log")
    right.set_ylabel(r"relative error $\|\Delta W K - D^*\|_F \,/\, \|D^*\|_F$")
    right.set_title("error vs Eckart-Young tail (0 for r >= rank D*)")
    for ax in (left, right):
        _rank_axis(ax, ranks)
    handles = [Line2D([], [], color=c, marker="o", markersize=4, label=f"depth L = {d}") for d, c in colors.items()]
    handles += [Line2D([], [], color=COLORS["control"], marker="o", markersize=4, label="trained LoRA"),
                Line2D([], [], color=COLORS["control"], linestyle="--",
                       label="EY truncation of D*: facts it recalls (left), its error (right)"),
                Line2D([], [], color=COLORS["theory"], label="RANK-1 exact storage: min(r, N)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, bbox_to_anchor=(0.5, -0.01))
    fig.suptitle(f"One rank-r LoRA on the last block's mlp_out vs RANK-1 ({_spread_note(results)})", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
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
            ax.axhline(held_out, color=COLORS["theory"], linestyle=":", linewidth=1.4,
                       label="base: held-out two-hop chains (familiar)")
            chance = float(np.mean([r.result["reuse"][fam]["chance"] for r in rows]))
            ax.axhline(chance, color=COLORS["control"], linewidth=1.0,
                       label="chance (T2, one-layer model: {AB, BC} merges stay here)")
            for method in methods:
                for lib, style in LIBRARY_STYLE.items():
                    s = summarise(rows, lambda x: x["reuse"][fam]["models"][f"{method}/{lib}"]["composed"])[depth]
                    _line(ax, s, METHOD_COLORS.get(method, "grey"), style, spread=lib == "hops",
                          label=f"{method} {LIBRARY_LABEL[lib]}")
                    data["curves"][f"{fam}/L{depth}/{method}/{lib}"] = s
            control = summarise(rows, lambda x: x["reuse"][fam]["models"]["average/hops"]["broadcast"]["composed"])
            _line(ax, control[depth], METHOD_COLORS["average"], ":", marker=None, spread=False,
                  label="average {AB, BC}: control (other subjects answered with a new C)")
            data["curves"][f"{fam}/L{depth}/average/hops/broadcast_control"] = control[depth]
            ax.set_ylim(-0.03, 1.03)
            _rank_axis(ax, ranks)
            ax.set_title(f"{fam} split, depth L = {depth} (base {held_out:.0%})", fontsize=9)
            if j == 0:
                ax.set_ylabel("composed exact match")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7,
               bbox_to_anchor=(0.5, -0.02))
    fmt = results[0].result.get("fmt", "?")
    fig.suptitle(f"Two-hop reuse vs LoRA rank ({fmt} format; {_spread_note(results)})", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig, _json_keys(data)


def _json_keys(data):
    """Integer dict keys (depths) as strings, so the sidecar round-trips through JSON."""
    if isinstance(data, dict):
        return {str(k): _json_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_json_keys(v) for v in data]
    return data
