"""Figures of ``mechanism``: bridge decodability per layer, T2 key overlaps per layer, and
the Arrow router's weights per token and layer. Curves are means over seeds with a 95%
t-band (``analysis.stats.mean_curve``) when there is more than one seed."""
from __future__ import annotations

import numpy as np

from analysis.cache import MissingResultsError, run_command
from analysis.plotstyle import COLORS, new_figure
from analysis.registry import Result
from analysis.stats import mean_curve

HOW = f"run `{run_command('mechanism', 'quick')}` (or --profile paper)"
MODELS = {"single/AC": ("expert AC alone", COLORS["sgd"]), "average/hops": ("average {AB, BC}", COLORS["average"]),
          "sum/hops": ("sum {AB, BC}", COLORS["sum"]), "arrow/hops": ("Arrow {AB, BC}", COLORS["routing"]),
          "average/with_AC": ("average {AB, BC, AC}", COLORS["bridge"]), "base": ("base", COLORS["control"])}


def _panels(results: list[Result]) -> list[tuple[str, str, list[Result]]]:
    if not results:
        raise MissingResultsError(f"figure needs mechanism results: {HOW}")
    keys = sorted({(r.config.fmt, r.config.familiarity) for r in results}, key=lambda k: (k[0] != "latent", k[1]))
    return [(f, fam, [r for r in results if (r.config.fmt, r.config.familiarity) == (f, fam)]) for f, fam in keys]


def _present(rs: list[Result], models: dict) -> dict:
    return {k: v for k, v in models.items() if k in rs[0].result["models"]}


def _curve(ax, x, curves, label, color, ls="-") -> dict:
    mean, half = mean_curve(curves)
    ax.plot(x, mean, color=color, ls=ls, label=label, marker="o", ms=3)
    if np.all(np.isfinite(half)):
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.15)
    return {"mean": mean.tolist(), "half_width": half.tolist(), "n": len(curves)}


def _grid(n: int):
    fig, axes = new_figure(ncols=min(n, 2), nrows=(n + 1) // 2, width=4.6, height=3.3)
    return fig, np.atleast_1d(axes).ravel()


def bridge_figure(results: list[Result]):
    """Logit-lens top-1 of the new bridge B at the last prompt token per layer (solid) and the
    linear probe's accuracy (dashed, familiar bridges only), per model."""
    panels = _panels(results)
    fig, axes = _grid(len(panels))
    data = {}
    for ax, (fmt, fam, rs) in zip(axes, panels):
        x = np.arange(rs[0].result["n_layers"] + 1)
        data[f"{fmt}/{fam}"] = d = {}
        for name, (label, color) in _present(rs, MODELS).items():
            d[name] = {"lens": _curve(ax, x, [r.result["models"][name]["lens_bridge_top1"] for r in rs], label, color)}
            if "probe_bridge_acc" in rs[0].result["models"][name]:
                d[name]["probe"] = _curve(ax, x, [r.result["models"][name]["probe_bridge_acc"] for r in rs],
                                          None, color, "--")
        if rs[0].result["probe_chance"] is not None:
            ax.axhline(rs[0].result["probe_chance"], color=COLORS["theory"], lw=0.8, ls=":", label="probe chance")
        ax.set_title(f"{fmt}, familiarity {fam}")
        ax.set_xlabel("layer (0 = embeddings, last = final stream)")
        ax.set_ylabel("share of prompts with B decoded")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xticks(x)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fullest = max(axes[:len(panels)], key=lambda a: len(a.get_legend_handles_labels()[0]))
    fullest.legend(loc="upper left", title="solid: logit lens, dashed: linear probe", title_fontsize=7)
    fig.suptitle("Is the bridge entity B decodable at the last prompt token of 'A r1 r2'?", y=1.0)
    fig.tight_layout()
    return fig, data


def keys_figure(results: list[Result]):
    """T2 coefficient <v2, v'>/||v2||^2 at each layer's mlp_out between the BC expert's key and
    the key where the answer is produced: two-hop prompts vs controls vs one-hop prompts."""
    panels = _panels(results)
    fig, axes = _grid(len(panels))
    styles = {"two_hop": ("-", "two-hop 'A r1 r2' (own B)"), "control": ("--", "control 'X r1 r2'"),
              "one_hop": (":", "one-hop 'B r2'")}
    data = {}
    for ax, (fmt, fam, rs) in zip(axes, panels):
        x = np.arange(rs[0].result["n_layers"])
        data[f"{fmt}/{fam}"] = d = {}
        for name, (label, color) in _present(rs, {k: MODELS[k] for k in ("average/hops", "arrow/hops")}).items():
            d[name] = {s: _curve(ax, x, [r.result["models"][name]["keys"][s] for r in rs],
                                 f"{label}: {text}", color, ls) for s, (ls, text) in styles.items()}
        ax.set_title(f"{fmt}, familiarity {fam}")
        ax.set_xlabel("layer of the MLP (key = input of W_out)")
        ax.set_ylabel("T2 coefficient <v2,v'>/||v2||^2")
        ax.set_xticks(x)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(loc="best", fontsize=6)
    fig.suptitle("T2: does the two-hop prompt reach the BC expert's key more than controls do?", y=1.0)
    fig.tight_layout()
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
            ax.set_xlabel("token of the prompt 'A r1 r2'")
        data[fmt] = {"familiarity": fam, "rows": rows, "tokens": tokens, "adapters": router["adapters"],
                     "weights": weights.tolist()}
    fig.colorbar(im, ax=list(axes), label="router weight, mean over prompts (top-1: share routed)", shrink=0.7)
    fig.suptitle("Arrow routing of {AB, BC} on two-hop prompts", y=1.0)
    return fig, data
