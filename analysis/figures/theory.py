"""Figures of the theory claims, drawn from ``Check.data`` of the claims that ran.

Each figure module lists ``FIGURES = [(figure name, claim ID, fn), ...]`` with
``fn(checks) -> (Figure, plotted data dict)``, where ``checks`` are that claim's checks.
"""
from __future__ import annotations

from typing import Any, Callable

from theory.claims import Check

FigureFn = Callable[[list[Check]], tuple[Any, dict[str, Any]]]


def theory_figures() -> list[tuple[str, str, FigureFn]]:
    figures: list[tuple[str, str, FigureFn]] = []
    # --- recall-model figures (T2, P1): analysis/figures/recall.py ---
    from analysis.figures import recall
    figures += recall.FIGURES
    # --- rank and merge figures: analysis/figures/rank.py ---
    from analysis.figures import rank
    figures += rank.FIGURES
    return figures
