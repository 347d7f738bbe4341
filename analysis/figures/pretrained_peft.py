"""Figure of ``pretrained_peft``: every scored model's number with PEFT's LoRA (y) against ours
(x), one point per (model, split, seed), on the line y = x where the backends agree; left the
composed exact match, right the specificity log-prob margin. Splits differ in colour and marker.
"""
from __future__ import annotations

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.figures.pretrained import FAM_COLORS, FAM_LABELS
from analysis.plotstyle import COLORS, DASHED, MARKERS, legend_below, new_figure
from analysis.registry import Result

BACKENDS = ("ours", "peft")
FAM_MARKERS = {"F": MARKERS["construction"], "H": MARKERS["average"], "R": MARKERS["routing"]}


def _value(row: dict | None, metric: str) -> float | None:
    if row is None:
        return None
    if metric == "composed":
        return row["composed"]
    spec = row.get("specificity")
    return None if spec is None else spec[metric]


def paired_cells(results: list[Result], metric: str) -> dict[int, list[tuple[str, str, float, float]]]:
    """``{seed: [(model, split, ours, peft), ...]}`` over the cells both backends scored."""
    by = {(r.config.seed, r.config.lora_backend): r.result["table"] for r in results}
    out: dict[int, list] = {}
    for seed in sorted({s for s, _ in by}):
        ours, peft = by.get((seed, "ours")), by.get((seed, "peft"))
        if ours is None or peft is None:
            continue
        cells = []
        for model in sorted(set(ours) & set(peft)):
            for fam in sorted(set(ours[model]) & set(peft[model])):
                o, p = _value(ours[model][fam], metric), _value(peft[model][fam], metric)
                if o is not None and p is not None:
                    cells.append((model, fam, float(o), float(p)))
        out[seed] = cells
    return out


def paired_values(results: list[Result], metric: str) -> dict[int, list[tuple[float, float]]]:
    """``{seed: [(ours, peft), ...]}`` (:func:`paired_cells` without the names)."""
    return {seed: [(o, p) for _, _, o, p in cells] for seed, cells in paired_cells(results, metric).items()}


def backend_figure(results: list[Result]):
    """``(figure, plotted numbers)``."""
    if not any(r.config.lora_backend == "peft" for r in results):
        raise MissingResultsError("figure needs pretrained_peft results of both backends: run "
                                  f"`{run_command('pretrained_peft', 'quick')}`")
    fig, axes = new_figure(ncols=2, width=3.8, height=3.6)
    data = {"panels": {}}
    for ax, metric, title in zip(axes, ("composed", "logprob_margin"),
                                 ("composed exact match", "specificity (nats)")):
        cells = [c for cs in paired_cells(results, metric).values() for c in cs]
        panel = {}
        for fam in sorted({f for _, f, _, _ in cells}):
            xs = [o for _, f, o, _ in cells if f == fam]
            ys = [p for _, f, _, p in cells if f == fam]
            ax.plot(xs, ys, ls="none", marker=FAM_MARKERS.get(fam, "o"), color=FAM_COLORS.get(fam, "black"),
                    alpha=0.7, label=FAM_LABELS.get(fam, fam))
            panel[fam] = {"ours": xs, "peft": ys}
        values = [v for _, _, o, p in cells for v in (o, p)] or [0.0, 1.0]
        low, high = min(values), max(values)
        pad = 0.05 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color=COLORS["theory"], ls=DASHED, lw=0.8,
                label="PEFT = ours")
        ax.set_xlabel("ours")
        ax.set_ylabel("PEFT")
        ax.set_title(title)
        data["panels"][metric] = panel
    seeds = sorted({r.config.seed for r in results})
    fig.suptitle(f"LoRA backends on {results[0].result['model'].split(' (')[0]}: one point per model, split "
                 f"and seed (seeds {', '.join(map(str, seeds))})", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    legend_below(fig, handles, labels, ncol=len(labels))
    data["seeds"] = seeds
    diffs = {m: [abs(p - o) for pairs in paired_values(results, m).values() for o, p in pairs]
             for m in ("composed", "logprob_margin")}
    data["max_abs_difference"] = {m: max(d) if d else None for m, d in diffs.items()}
    return fig, data
