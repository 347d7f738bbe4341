"""Figures of the recall-model claims: T2 margin against key overlap, P1 GD convergence.

Both draw from ``Check.data`` (see theory/t2.py and theory/p1.py); run
``lora-limits theory --claim T2`` (or ``P1``) to produce them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from matplotlib.lines import Line2D

from analysis.plotstyle import COLORS, DASHED, legend_below, new_figure
from theory.claims import Check

# The bridge panel shows the sum merge. The average merge (c = 1/2, the sum's overlaps halved)
# is left out to keep the PNG small; its rates are in the T2 checks.
PANELS = ("sum", "routing", "bridge")
LABELS = {"sum": "sum (c = 1)", "average": "average (c = 1/2)", "routing": "Arrow routing (top-1)",
          "bridge": "bridge (key v' = v2), sum"}
REGIMES = {"centred": "globally centred keys", "relation": "relation-centred keys", "raw": "raw ReLU keys"}
SHOWN = 300  # instances drawn per panel (a seeded subsample; the rates are over all instances)


def _need(checks: list[Check], check_id: str) -> Check:
    for c in checks:
        if c.id == check_id:
            return c
    claim_id = check_id.split(".")[0]
    raise ValueError(f"figure needs check {check_id}; produce it with: lora-limits theory --claim {claim_id}")


def _r(x) -> list:
    return np.round(np.asarray(x, dtype=float), 3).tolist()


def t2_margin_vs_overlap(checks: list[Check], shown: int = SHOWN) -> tuple[Any, dict[str, Any]]:
    """z~'s margin (logit of z~ minus the best other entity) against the key overlap
    ``a2 = <v2,v'>/||v2||^2``, per instance: true two-hop prompt (colour) vs control prompt
    about another subject (grey). Rows: key regimes; columns: reuse methods + the bridge.
    Draws (and stores in the sidecar) the same seeded subsample of ``shown`` instances in
    every panel; the rates in each panel are over all instances (the T2 checks' statistics)."""
    regimes = [r for r in REGIMES if any(c.id.startswith(f"T2.{r}.") for c in checks)]
    if not regimes:
        raise ValueError("figure needs T2 checks; produce them with: lora-limits theory --claim T2")
    first = _need(checks, f"T2.{regimes[0]}.sum.no_composition").data
    n, chance = first["a2"].shape[0], first["chance"]
    pick = np.sort(np.random.default_rng(0).choice(n, size=min(shown, n), replace=False))  # same instances everywhere
    fig, axes = new_figure(ncols=len(PANELS), nrows=len(regimes), width=2.3, height=1.8)
    axes = np.asarray(axes).reshape(len(regimes), len(PANELS))  # (rows, cols)
    data: dict[str, Any] = {"instances": int(n), "shown": len(pick), "subsample_seed": 0, "chance": chance}
    for i, regime in enumerate(regimes):
        a2 = _need(checks, f"T2.{regime}.sum.no_composition").data["a2"][pick]  # (shown, P): same for every method
        data[regime] = {"a2": {p: _r(a2[:, k]) for k, p in enumerate(first["prompts"])}, "margin_z": {}, "rates": {}}
        for j, panel in enumerate(PANELS):
            method = "sum" if panel == "bridge" else panel
            d = _need(checks, f"T2.{regime}.{method}.no_composition").data
            true_p, ctrl_p = (2, 3) if panel == "bridge" else (0, 1)  # columns of PROMPTS
            ax, colour = axes[i, j], COLORS["bridge" if panel == "bridge" else method]
            mz, rates = d["margin_z"][pick], d["rates"]
            ax.axhline(0.0, color=COLORS["theory"], lw=0.9)
            ax.axvline(0.0, color=COLORS["theory"], lw=0.5, ls=":")
            # small markers without antialiasing: they look the same at this size, and the PNG is half as large
            ax.scatter(a2[:, ctrl_p], mz[:, ctrl_p], s=9, marker="+", color=COLORS["control"], linewidths=0.6,
                       antialiased=False)
            ax.scatter(a2[:, true_p], mz[:, true_p], s=4, color=colour, linewidths=0, antialiased=False)
            if panel == "bridge":  # control: a stored fact (margin 1) that z~ gains c2 a2 on (T2 identity)
                ax.plot([0.0, 1.0], [-1.0, 0.0], color=COLORS["theory"], ls=DASHED, marker="", lw=0.8)
            ax.set_title(f"{LABELS[panel]}\nanswers z~: true {rates[true_p]:.0%}, control {rates[ctrl_p]:.0%}",
                         fontsize=7)
            if i == len(regimes) - 1:
                ax.set_xlabel("key overlap a2 = <v2,v'>/||v2||^2", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{REGIMES[regime]}\nmargin of z~", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(False)
            data[regime]["margin_z"][panel] = {"true": _r(mz[:, true_p]), "control": _r(mz[:, ctrl_p])}
            data[regime]["rates"][panel] = {"true": float(rates[true_p]), "control": float(rates[ctrl_p])}
    handles = [Line2D([], [], ls="", marker="o", ms=4, color=COLORS["sum"],
                      label="true prompt \"x r1 r2\" (colour: method)"),
               Line2D([], [], ls="", marker="+", ms=5, color=COLORS["control"],
                      label="control \"x' r1 r2\" (another subject)"),
               Line2D([], [], color=COLORS["theory"], lw=0.9, label="margin 0: above it the model answers z~"),
               Line2D([], [], color=COLORS["theory"], ls=DASHED, lw=0.8, label="bridge control, theory: a2 - 1")]
    legend_below(fig, handles, ncol=2, fontsize=7)
    fig.suptitle(f"T2: margin of the two-hop answer z~, merged/routed one-hop adapters ({len(pick)} of {n} random "
                 f"instances drawn;\nrates over all {n}, chance {chance:.0%}): z~ gains only through a2, as much on "
                 "controls (broadcast, not composition);\na bridge key (v' = v2) composes", fontsize=8)
    return fig, data


def p1_gd_convergence(checks: list[Check]) -> tuple[Any, dict[str, Any]]:
    """Distance of gradient descent's iterate to its predicted limit, per step, from
    DW = 0 (limit: the P1 closed form) and from a random DW0 (limit: DW* + DW0 (I - P_v)),
    beside the predicted geometric rate (1 - lr)^t."""
    d = _need(checks, "P1.gd_zero_init").data
    step = np.asarray(d["step"])
    fig, ax = new_figure(width=4.6, height=3.4)
    ax.semilogy(step, np.asarray(d["predicted"]), color=COLORS["theory"], lw=1, ls=DASHED, marker="",
                label="predicted (1 - lr)^t")
    ax.semilogy(step, np.asarray(d["error_zero_init"]), "o", ms=3, color=COLORS["sgd"], label="GD from DW = 0")
    ax.semilogy(step, np.asarray(d["error_nonzero_init"]), "s", ms=3, mfc="none", color=COLORS["construction"],
                label="GD from DW0 != 0 (to DW* + DW0(I - P_v))")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("||DW_t - limit||_F")
    ax.set_title("P1: GD on the squared error reaches the rank-one edit")
    legend_below(fig, ncol=1)
    return fig, {"step": step.tolist(), "predicted": _r(d["predicted"]),
                 "error_zero_init": np.asarray(d["error_zero_init"], dtype=float).tolist(),
                 "error_nonzero_init": np.asarray(d["error_nonzero_init"], dtype=float).tolist()}


FIGURES = [("t2_margin_vs_overlap", "T2", t2_margin_vs_overlap), ("p1_gd_convergence", "P1", p1_gd_convergence)]
