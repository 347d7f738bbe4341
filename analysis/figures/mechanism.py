"""Figures of ``mechanism``: bridge decodability per layer, T2 key overlaps per layer, and
the Arrow router's weights per token and layer. Curves are means over seeds with a 95%
t-band (``analysis.stats.mean_curve``) when there is more than one seed."""
from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from analysis.cache import MissingResultsError, run_command
from analysis.plotstyle import (COLORS, DASHED, DOTTED, OPEN, SOLID, band, is_empty, legend_below, new_figure,
                                note_empty, role)
from analysis.registry import Result
from analysis.stats import mean_curve

HOW = f"run `{run_command('mechanism', 'quick')}` (or --profile paper)"
# model -> (label, role): the role gives its colour and marker (analysis.plotstyle.role)
MODELS = {"single/AC": ("expert AC alone", "sgd"), "average/hops": ("average {AB, BC}", "average"),
          "sum/hops": ("sum {AB, BC}", "sum"), "arrow/hops": ("Arrow {AB, BC}", "routing"),
          "average/with_AC": ("average {AB, BC, AC}", "bridge"), "base": ("base", "control")}


def _panels(results: list[Result]) -> list[tuple[str, str, list[Result]]]:
    if not results:
        raise MissingResultsError(f"figure needs mechanism results: {HOW}")
    keys = sorted({(r.config.fmt, r.config.familiarity) for r in results}, key=lambda k: (k[0] != "latent", k[1]))
    return [(f, fam, [r for r in results if (r.config.fmt, r.config.familiarity) == (f, fam)]) for f, fam in keys]


def _present(rs: list[Result], models: dict) -> dict:
    return {k: v for k, v in models.items() if k in rs[0].result["models"]}


def _curve(ax, x, curves, label, style: dict, limits: tuple[float, float] | None = None) -> dict:
    """Mean over seeds with its 95% t-band (clipped to ``limits`` when the measure has a range)."""
    mean, half = mean_curve(curves)
    ax.plot(x, mean, label=label, linewidth=1.4, **style)
    band(ax, x, mean - half, mean + half, style["color"], limits or (-np.inf, np.inf), alpha=0.12)
    return {"mean": mean.tolist(), "half_width": half.tolist(), "n": len(curves)}


def _grid(n: int):
    fig, axes = new_figure(ncols=min(n, 2), nrows=(n + 1) // 2, width=4.6, height=3.3)
    return fig, np.atleast_1d(axes).ravel()


def bridge_figure(results: list[Result]):
    """Logit-lens top-1 of the new bridge B at the last prompt token per layer (solid, filled
    markers) and the linear probe's accuracy (dashed, open markers; familiar bridges only),
    per model. Bands: 95% t-intervals over seeds, clipped to [0, 1]."""
    panels = _panels(results)
    fig, axes = _grid(len(panels))
    data = {}
    for ax, (fmt, fam, rs) in zip(axes, panels):
        x = np.arange(rs[0].result["n_layers"] + 1)
        data[f"{fmt}/{fam}"] = d = {}
        for name, (label, kind) in _present(rs, MODELS).items():
            d[name] = {"lens": _curve(ax, x, [r.result["models"][name]["lens_bridge_top1"] for r in rs], label,
                                      role(kind, linestyle=SOLID), (0, 1))}
            if "probe_bridge_acc" in rs[0].result["models"][name]:
                d[name]["probe"] = _curve(ax, x, [r.result["models"][name]["probe_bridge_acc"] for r in rs],
                                          None, role(kind, linestyle=DASHED, **OPEN), (0, 1))
        probe = rs[0].result["probe_chance"] is not None
        if probe:
            ax.axhline(rs[0].result["probe_chance"], color=COLORS["theory"], lw=0.9, ls=DOTTED, label="probe chance")
        if is_empty([c["mean"] for m in d.values() for c in m.values()]):
            note_empty(ax, "all zero: no model ranks the new bridge B\nfirst at any layer (logit lens)"
                       + ("" if probe else "; no probe here"))
        ax.set_title(f"{fmt}, familiarity {fam}" + ("" if probe else "\n(logit lens only: a new bridge has no "
                                                                    "probe labels)"), fontsize=10)
        ax.set_xlabel("layer (0 = embeddings, last = final stream)")
        ax.set_ylabel("share of prompts with B decoded")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xticks(x)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], label=label, linestyle="none", **role(kind))
               for name, (label, kind) in MODELS.items() if any(name in m for m in data.values())]
    handles += [Line2D([], [], color=COLORS["control"], ls=SOLID, label="solid, filled: logit lens top-1"),
                Line2D([], [], color=COLORS["control"], ls=DASHED, label="dashed, open: linear probe accuracy")]
    if any(rs[0].result["probe_chance"] is not None for _, _, rs in panels):
        handles.append(Line2D([], [], color=COLORS["theory"], lw=0.9, ls=DOTTED, label="probe chance"))
    legend_below(fig, handles, ncol=3)
    fig.suptitle("Is the bridge entity B decodable at the last prompt token of 'A r1 r2'? "
                 "(mean, 95% CI over seeds)", fontsize=10)
    return fig, data


# prompt set -> (label, line style, marker): the contrast two-hop vs control is the claim (T2),
# so the two differ in marker shape as well as in dashes
PROMPTS = {"two_hop": ("two-hop 'A r1 r2' (own B)", SOLID, "o"), "control": ("control 'X r1 r2'", DASHED, "s"),
           "one_hop": ("one-hop 'B r2'", DOTTED, "^")}


def keys_figure(results: list[Result]):
    """T2 coefficient <v2, v'>/||v2||^2 at each layer's mlp_out between the BC expert's key and
    the key where the answer is produced: two-hop prompts vs controls vs one-hop prompts.
    Colour (and filled / open markers): the model; line style and marker shape: the prompts."""
    panels = _panels(results)
    fig, axes = _grid(len(panels))
    shown = {"average/hops": {}, "arrow/hops": OPEN}  # model -> marker fill
    data, handles = {}, {}
    for ax, (fmt, fam, rs) in zip(axes, panels):
        x = np.arange(rs[0].result["n_layers"])
        data[f"{fmt}/{fam}"] = d = {}
        for name, (label, kind) in _present(rs, {k: MODELS[k] for k in shown}).items():
            d[name] = {}
            for s, (text, ls, marker) in PROMPTS.items():
                style = {"color": COLORS[kind], "linestyle": ls, "marker": marker, **shown[name]}
                d[name][s] = _curve(ax, x, [r.result["models"][name]["keys"][s] for r in rs], None, style)
                handles.setdefault((s, name), Line2D([], [], label=f"{label}: {text}", **style))
        ax.axhline(0.0, color=COLORS["theory"], lw=0.6)
        ax.set_title(f"{fmt}, familiarity {fam}")
        ax.set_xlabel("layer of the MLP (key = input of W_out)")
        ax.set_ylabel("T2 coefficient <v2,v'>/||v2||^2")
        ax.set_xticks(x)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    order = [handles[k] for k in sorted(handles, key=lambda k: (list(PROMPTS).index(k[0]), list(shown).index(k[1])))]
    legend_below(fig, order, ncol=len(PROMPTS), title="columns: prompts (line style, marker shape); "
                 "rows: model (colour; Arrow open markers). Bands: 95% CI over seeds")
    fig.suptitle("T2: does the two-hop prompt reach the BC expert's key more than controls do?")
    return fig, data


def router_figure(results: list[Result]):
    """Arrow router weights on the {AB, BC} library per token (columns) and routed map (rows:
    role, layer), averaged over the composed prompts; one panel per format and adapter."""
    panels = [(f, fam, rs) for f, fam, rs in _panels(results) if "arrow/hops" in rs[0].result["router"]]
    if not panels:
        raise MissingResultsError(f"figure needs mechanism results with Arrow routing: {HOW}")
    chosen = {}
    for fmt, fam, rs in panels:  # one familiarity per format: R if present
        if fmt not in chosen or fam == "R":
            chosen[fmt] = (fam, rs)
    first = next(iter(chosen.values()))[1][0].result["router"]["arrow/hops"]["adapters"]
    shown = first[1:] if len(first) == 2 else first  # two adapters: the weights sum to 1, show one
    fig, axes = new_figure(ncols=len(chosen) * len(shown), width=3.4, height=4.6)
    axes, data = np.atleast_1d(axes), {}
    for i, (fmt, (fam, rs)) in enumerate(chosen.items()):
        router = rs[0].result["router"]["arrow/hops"]
        weights = np.mean([r.result["router"]["arrow/hops"]["mean"] for r in rs], axis=0)  # (P, T, n)
        rows = [f"{role} L{layer}" for role, layer in zip(router["roles"], router["layers"])]
        tokens = rs[0].result["tokens"]
        for k, adapter in enumerate(shown):
            ax = axes[i * len(shown) + k]
            im = ax.imshow(weights[:, :, router["adapters"].index(adapter)], vmin=0, vmax=1, cmap="viridis",
                           aspect="auto")
            ax.set_xticks(range(len(tokens)), tokens)
            ax.set_yticks(range(len(rows)), rows if i + k == 0 else [], fontsize=6)
            ax.grid(False)
            rest = " (AB: 1 - w)" if len(first) == 2 else ""
            ax.set_title(f"{fmt}, {fam}: weight w on {adapter}{rest}", fontsize=9)
            # every input token up to the answer: CoT prompts also hold SEP and the bridge B
            ax.set_xlabel("input token before the answer" + ("\n(CoT: 'A r1 r2', SEP, then B)" if "B" in tokens
                                                           else "\n(latent: 'A r1 r2', SEP)"))
        data[fmt] = {"familiarity": fam, "rows": rows, "tokens": tokens, "adapters": router["adapters"],
                     "weights": weights.tolist()}
    fig.colorbar(im, ax=list(axes), label="router weight, mean over prompts (top-1: share routed)", shrink=0.7)
    fig.suptitle("Arrow routing of {AB, BC} on two-hop prompts")
    return fig, data
