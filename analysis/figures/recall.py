"""Figures of the recall-model claims: T2 margin against key overlap, P1 GD convergence.

Both draw from ``Check.data`` (see theory/t2.py and theory/p1.py); run
``lora-limits theory --claim T2`` (or ``P1``) to produce them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from analysis.plotstyle import COLORS, new_figure
from theory.claims import Check

PANELS = ("sum", "average", "routing", "bridge")  # the bridge panel shows the sum merge
LABELS = {"sum": "sum (c = 1)", "average": "average (c = 1/2)", "routing": "Arrow routing (top-1)",
          "bridge": "bridge key = v2, sum"}


def _need(checks: list[Check], check_id: str) -> Check:
    for c in checks:
        if c.id == check_id:
            return c
    claim_id = check_id.split(".")[0]
    raise ValueError(f"figure needs check {check_id}; produce it with: lora-limits theory --claim {claim_id}")


def _r(x) -> list:
    return np.round(np.asarray(x, dtype=float), 4).tolist()


def t2_margin_vs_overlap(checks: list[Check]) -> tuple[Any, dict[str, Any]]:
    """z~'s margin (logit of z~ minus the best other entity) against the key overlap
    ``a2 = <v2,v'>/||v2||^2``, per instance: true two-hop prompt (colour) vs control prompt
    about another subject (grey). Rows: key regimes; columns: reuse methods + the bridge."""
    regimes = [r for r in ("centred", "raw") if any(c.id.startswith(f"T2.{r}.") for c in checks)]
    if not regimes:
        raise ValueError("figure needs T2 checks; produce them with: lora-limits theory --claim T2")
    fig, axes = new_figure(ncols=len(PANELS), nrows=len(regimes), width=3.5, height=3.2)
    axes = np.asarray(axes).reshape(len(regimes), len(PANELS))  # (rows, cols)
    data: dict[str, Any] = {}
    for i, regime in enumerate(regimes):
        for j, panel in enumerate(PANELS):
            method = "sum" if panel == "bridge" else panel
            d = _need(checks, f"T2.{regime}.{method}.no_composition").data
            true_p, ctrl_p = (2, 3) if panel == "bridge" else (0, 1)  # columns of PROMPTS
            ax, colour = axes[i, j], COLORS["bridge" if panel == "bridge" else method]
            a2, mz, rates = d["a2"], d["margin_z"], d["rates"]
            ax.scatter(a2[:, true_p], mz[:, true_p], s=7, color=colour, alpha=0.45, linewidths=0,
                       label=f"true: {rates[true_p]:.0%}")
            ax.scatter(a2[:, ctrl_p], mz[:, ctrl_p], s=7, facecolors="none", edgecolors=COLORS["control"],
                       linewidths=0.5, alpha=0.6, label=f"control: {rates[ctrl_p]:.0%}")
            if panel == "bridge":  # control: a stored fact (margin 1) that z~ gains c2 a2 on (T2 identity)
                xs = np.linspace(0.0, 1.0, 2)
                ax.plot(xs, xs - 1.0, color=COLORS["theory"], ls="--", lw=0.8, label="control theory: a2 - 1")
                ax.set_xlim(left=-0.7)  # room for the legend left of the data
            ax.axhline(0.0, color=COLORS["theory"], lw=0.8)
            ax.axvline(0.0, color=COLORS["theory"], lw=0.5, ls=":")
            ax.set_title(f"{regime} keys: {LABELS[panel]}")
            ax.set_xlabel("key overlap <v2, v'> / ||v2||^2")
            if j == 0:
                ax.set_ylabel("margin of z~ (> 0: answers z~)")
            ax.legend(loc="center left" if panel == "bridge" else "lower right",
                      title=f"answers z~ (chance {d['chance']:.0%})", title_fontsize=8,
                      markerscale=2, framealpha=0.85, frameon=True)
            data[f"{regime}.{panel}"] = {"a2_true": _r(a2[:, true_p]), "margin_true": _r(mz[:, true_p]),
                                         "a2_control": _r(a2[:, ctrl_p]), "margin_control": _r(mz[:, ctrl_p]),
                                         "rate_true": float(rates[true_p]), "rate_control": float(rates[ctrl_p]),
                                         "chance": d["chance"]}
    n = len(data[f"{regimes[0]}.sum"]["a2_true"])
    fig.suptitle(f"T2: margin of the two-hop answer z~ under merged/routed one-hop adapters "
                 f"({n} random instances per panel)\ntrue prompt \"x r1 r2\" (colour) vs control \"x' r1 r2\" "
                 "about another subject (grey): z~ gains only through <v2, v'>, as much on controls; "
                 "a bridge key (v' = v2) composes", fontsize=10)
    fig.tight_layout()
    return fig, data


def p1_gd_convergence(checks: list[Check]) -> tuple[Any, dict[str, Any]]:
    """Distance of gradient descent's iterate to its predicted limit, per step, from
    DW = 0 (limit: the P1 closed form) and from a random DW0 (limit: DW* + DW0 (I - P_v)),
    beside the predicted geometric rate (1 - lr)^t."""
    d = _need(checks, "P1.gd_zero_init").data
    step = np.asarray(d["step"])
    fig, ax = new_figure(width=4.6, height=3.4)
    ax.semilogy(step, np.asarray(d["predicted"]), color=COLORS["theory"], lw=1, ls="--", label="predicted (1 - lr)^t")
    ax.semilogy(step, np.asarray(d["error_zero_init"]), "o", ms=3, color=COLORS["sgd"], label="GD from DW = 0")
    ax.semilogy(step, np.asarray(d["error_nonzero_init"]), "s", ms=3, mfc="none", color=COLORS["construction"],
                label="GD from DW0 != 0 (to DW* + DW0(I - P_v))")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("||DW_t - limit||_F")
    ax.set_title("P1: GD on the squared error reaches the rank-one edit")
    ax.legend()
    return fig, {"step": step.tolist(), "predicted": _r(d["predicted"]),
                 "error_zero_init": np.asarray(d["error_zero_init"], dtype=float).tolist(),
                 "error_nonzero_init": np.asarray(d["error_nonzero_init"], dtype=float).tolist()}


FIGURES = [("t2_margin_vs_overlap", "T2", t2_margin_vs_overlap), ("p1_gd_convergence", "P1", p1_gd_convergence)]
