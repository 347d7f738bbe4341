"""Figures of RANK-1 (facts stored vs LoRA rank) and RANK-2 (Zeng & Lee thresholds), drawn
from ``Check.data`` of ``theory/rank.py`` and ``theory/expressive.py``. Errors that are
exact (zero up to float64 round-off) are drawn at ``FLOOR`` on the log axis and say so."""
from __future__ import annotations

from typing import Any

import numpy as np

from analysis.plotstyle import COLORS, DOTTED, SOLID, legend_below, new_figure
from theory.claims import Check

FLOOR = 1e-12  # exact results (~1e-15) are drawn here so that the log axis can show them


def _data(checks: list[Check], claim_id: str, key: str) -> dict[str, Any]:
    for c in checks:
        if key in c.data:
            return c.data
    raise ValueError(f"no {claim_id} data with {key!r} among the checks; run: lora-limits theory --claim {claim_id}")


def _floor(values) -> np.ndarray:
    return np.maximum(np.asarray(values, dtype=float), FLOOR)


def _threshold(ax, at: float, label: str) -> None:
    ax.axvline(at, color=COLORS["control"], linestyle=DOTTED, linewidth=1.2)
    ax.text(at, 0.97, f" {label}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
            color=COLORS["control"])


def _log_axis(ax) -> None:
    """Log y axis with a shaded band (a legend entry) where exact results sit."""
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 5, None)
    ax.axhspan(FLOOR / 5, FLOOR * 3, color=COLORS["control"], alpha=0.15, linewidth=0,
               label=f"exact (< {FLOOR:.0e}, float64 round-off)")


def rank1_error_vs_rank(checks: list[Check]):
    """RANK-1: ||DW K - D||_F of the optimal and the Adam-trained rank-r update vs the EY tail."""
    d = _data(checks, "RANK-1", "construction")
    fig, ax = new_figure(width=5.0, height=3.6)
    r = d["ranks"]
    ax.plot(r, _floor(d["predicted"]), color=COLORS["theory"], linestyle=SOLID, marker="", linewidth=1.5,
            label=r"Eckart-Young tail $\sqrt{\sum_{i>r}\sigma_i(D)^2}$")
    ax.plot(r, _floor(d["construction"]), "o", color=COLORS["construction"], markersize=7, label="optimal construction")
    ax.plot(r, _floor(d["trained"]), "x", color=COLORS["sgd"], markersize=8, mew=1.8,
            label="Adam-trained B@A (300 steps, LoRA init)")
    _threshold(ax, d["rank_D"], f"rank(D) = {d['rank_D']}")
    _log_axis(ax)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel(r"error $\|\Delta W K - D\|_F$")
    ax.set_title(f"RANK-1: {d['n_facts']} facts with {d['rank_D']} independent changes")
    legend_below(fig, ncol=2)
    plotted = {k: d[k] for k in ("ranks", "predicted", "construction", "trained", "rank_D", "n_facts", "counts")}
    return fig, plotted


def rank2_error_vs_rank(checks: list[Check]):
    """RANK-2: construction vs Adam-trained LoRA, linear (with Zeng & Lee's optimum) and ReLU."""
    d = _data(checks, "RANK-2", "relu")
    fig, (left, right) = new_figure(ncols=2, width=4.6, height=3.6)
    r, lin, relu = d["ranks"], d["linear"], d["relu"]
    left.plot(r, _floor(lin["pred_frobenius"]), color=COLORS["theory"], linestyle=SOLID, marker="", linewidth=1.5,
              label=r"linear optimum $\sqrt{\sum_{i>RL}\sigma_i(E)^2}$")
    left.plot(r, _floor(lin["frobenius"]), "o", color=COLORS["construction"], markersize=7, label="construction")
    left.plot(r, _floor(lin["sgd_frobenius"]), "x-", color=COLORS["sgd"], markersize=8, mew=1.8, linewidth=0.8,
              label="Adam-trained LoRA (ReLU: + biases), 300 steps")
    _threshold(left, d["linear_threshold"], f"ceil(rank E / L) = {d['linear_threshold']}")
    left.set_title(f"linear: D={d['width']}, frozen L={d['linear_depth']}, target L~={d['target_depth']}")
    left.set_ylabel(r"product gap $\|\prod_l (W_l+\Delta W_l) - \bar W\|_F$")
    right.plot(r, _floor(relu["construction"]), "o-", color=COLORS["construction"], markersize=7, linewidth=0.8)
    right.plot(r, _floor(relu["sgd"]), "x-", color=COLORS["sgd"], markersize=8, mew=1.8, linewidth=0.8)
    _threshold(right, d["relu_threshold"], f"ceil(D L~ / L) = {d['relu_threshold']}")
    right.set_title(f"ReLU: D={d['width']}, frozen L={d['depth']}, target L~={d['target_depth']}")
    right.set_ylabel(r"relative RMS error on $\|x\|\leq 1$")
    for ax in (left, right):
        _log_axis(ax)
        ax.set_xlabel("LoRA rank R per layer")
    fig.suptitle("RANK-2 (Zeng & Lee 2024): exact at the rank threshold", fontsize=11)
    legend_below(fig, ncol=4)
    return fig, {k: d[k] for k in ("ranks", "width", "depth", "linear_depth", "target_depth", "linear_threshold",
                                    "relu_threshold", "linear", "relu")}


FIGURES = [
    ("rank1_error_vs_rank", "RANK-1", rank1_error_vs_rank),
    ("rank2_error_vs_rank", "RANK-2", rank2_error_vs_rank),
]
