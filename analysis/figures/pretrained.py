"""Figure of ``pretrained_two_hop``: composed accuracy per model (base, experts, joint
LoRAs, each reuse method) and split F / H / R / O, one panel per library, with the
broadcast control of the BC expert's answers as a marker above each bar group (where the
profile asks other-subject controls); a third panel, the specificity on the composed
prompts themselves (log P(right) - log P(another question's answer)) of every model; where
the results hold retention sets, a fourth: retention of the base's own facts and chains
and of the experts' one-hop facts, per model, beside its composed accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.plotstyle import COLORS, DASHED, bar_style, is_empty, legend_below, new_figure, note_empty
from analysis.registry import Result

FAM_COLORS = {"F": COLORS["construction"], "H": COLORS["average"], "R": COLORS["routing"], "O": COLORS["bridge"]}
FAM_LABELS = {"F": "F (fictional)", "H": "H (new city, real country)", "R": "R (known facts)",
              "O": "O (known facts, never composed in training)"}
FAM_HATCHES = {"F": "", "H": "///", "R": "...", "O": "xx"}  # the splits differ in grey too
RETENTION_BARS = (("retain/facts", "base's own facts", COLORS["sum"], ""),
                  ("retain/chains", "base's own chains (two-hop)", COLORS["ties"], "\\\\"),
                  ("one_hop", "experts' one-hop facts (mean over splits)", COLORS["svd"], "--"))


def _label(name: str) -> str:
    kind, _, what = name.partition("/")
    return {"base": "base", "single": f"{what} alone", "joint": "joint"}.get(kind, kind)


def _nanmean(values) -> float:
    values = [np.nan if v is None else v for v in values]
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")


def pretrained_figure(results: list[Result]):
    """``(figure, plotted numbers)``."""
    if not results:
        raise MissingResultsError(f"figure needs pretrained_two_hop results: run "
                                  f"`{run_command('pretrained_two_hop', 'quick')}` (or --profile paper)")
    rows = [r.result for r in results]  # one per config; several (seeds, --set) are averaged
    fams = [f for f in FAM_COLORS if any(row["table"]["base"].get(f) is not None for row in rows)]
    names = rows[0]["order"]
    panels = {lib: [n for n in names if not n.endswith("/" + _other(lib))] for lib in ("hops", "with_AC")}
    retention = any(row.get("retention", {}).get("base") for row in rows)
    fig, axes = new_figure(ncols=4 if retention else 3, width=4.6, height=3.6)
    data = {"familiarities": fams, "panels": {}, "base_familiarity": [row["familiarity"]["exact"] for row in rows],
            "r_split": [row["r_split"] for row in rows]}
    for ax, (lib, models) in zip(axes[:2], panels.items()):
        x, width = np.arange(len(models)), 0.8 / max(len(fams), 1)
        panel = {}
        for i, fam in enumerate(fams):
            acc = [_nanmean([(row["table"][m][fam] or {}).get("composed") for row in rows]) for m in models]
            cast = [_nanmean([row["broadcast"][m][fam]["BC"] for row in rows]) for m in models]
            pos = x + (i - (len(fams) - 1) / 2) * width
            ax.bar(pos, acc, width, label=FAM_LABELS[fam], **bar_style(FAM_COLORS[fam], FAM_HATCHES[fam]))
            ax.scatter(pos, cast, marker="x", color=COLORS["theory"], s=14, zorder=3,
                       label="broadcast (BC answers on other questions)" if i == 0 else None)
            panel[fam] = {"models": models, "composed": acc, "broadcast_BC": cast}
        data["panels"][lib] = panel
        if is_empty([v for f in panel.values() for v in f["composed"] + f["broadcast_BC"]]):
            note_empty(ax, "no model answers any two-hop question here,\nnor any broadcast control")
        ax.set_xticks(x, [_label(m) for m in models], rotation=40, ha="right")
        ax.set_ylim(0, 1.05)
        chance = _nanmean([row["chance"][f]["BC"] for row in rows for f in fams])
        ax.axhline(chance, color=COLORS["control"], linestyle=DASHED, linewidth=0.8,
                   label="broadcast chance (mean over splits)")
        ax.set_title(f"library {{{', '.join(_members(lib))}}}")
    axes[0].set_ylabel("share of questions")
    data["specificity"] = _specificity_panel(axes[2], rows, names, fams)
    if retention:
        data["retention"] = _retention_panel(axes[3], rows, names, fams)
    base, r = np.mean(data["base_familiarity"]), rows[0]["r_split"]
    model = Path(rows[0]["model"].split(" (")[0]).name
    o = rows[0].get("o_split") or {}
    ood = f", O split {o['countries']} of {o['requested']}" if o.get("requested") else ""
    fig.suptitle(f"{model}: two-hop reuse in natural language; base one-hop familiarity {base:.2f}, "
                 f"R split {r['countries']} of {r['requested']} countries{ood}", fontsize=10)
    legend_below(fig, ncol=3, title="bars: composed accuracy on held-out two-hop questions, per split")
    return fig, data


def _specificity_panel(ax, rows: list[dict], models: list[str], fams: list[str]) -> dict:
    """Per model and familiarity: log P(right) - log P(another composed question's answer) on
    the same prompts (mean over seeds); 0 = the model broadcasts new answers without
    telling questions apart."""
    x, width, panel = np.arange(len(models)), 0.8 / max(len(fams), 1), {}
    for i, fam in enumerate(fams):
        vals = [_nanmean([((row["table"][m][fam] or {}).get("specificity") or {}).get("logprob_margin")
                          for row in rows]) for m in models]
        ax.bar(x + (i - (len(fams) - 1) / 2) * width, vals, width, **bar_style(FAM_COLORS[fam], FAM_HATCHES[fam]))
        panel[fam] = {"models": models, "logprob_margin": vals}
    ax.axhline(0, color=COLORS["control"], linestyle=DASHED, linewidth=0.8)
    if is_empty([v for f in panel.values() for v in f["logprob_margin"]]):
        note_empty(ax, "no margin to show: every margin is 0, or no split\nhas two composed answers of one relation to compare")
    ax.set_xticks(x, models, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("margin, nats")  # short: a longer rotated label reached the suptitle
    ax.set_title("specificity: log P(right) - log P(wrong)")
    return panel


def _retention_panel(ax, rows: list[dict], models: list[str], fams: list[str]) -> dict:
    """Per model: exact match on what fine-tuning should leave alone (the base's own facts and
    chains that no expert trains; the experts' own one-hop facts, mean over splits), mean
    over seeds; the base answers every retained fact by construction."""
    x, width, panel = np.arange(len(models)), 0.8 / len(RETENTION_BARS), {}
    for i, (key, label, color, hatch) in enumerate(RETENTION_BARS):
        if key == "one_hop":
            vals = [_nanmean([_nanmean([(row["table"][m][f] or {}).get("one_hop") for f in fams]) for row in rows])
                    for m in models]
        else:
            vals = [_nanmean([row.get("retention", {}).get(m, {}).get(key) for row in rows]) for m in models]
        ax.bar(x + (i - (len(RETENTION_BARS) - 1) / 2) * width, vals, width, label=label, **bar_style(color, hatch))
        panel[key] = {"models": models, "exact": vals}
    ax.set_xticks(x, models, rotation=60, ha="right", fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_title("retention: what fine-tuning should keep")
    return panel


def _other(lib: str) -> str:
    return "with_AC" if lib == "hops" else "hops"


def _members(lib: str) -> tuple[str, ...]:
    from toymodels.pretrained_two_hop import LIBRARIES

    return LIBRARIES[lib]
