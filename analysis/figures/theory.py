"""Figures of the theory claims, drawn from ``Check.data`` of the claims that ran.

Each entry of :data:`THEORY_FIGURES` is ``(figure name, claim ID, fn)`` with
``fn(checks) -> (Figure, plotted data dict)``; ``checks`` are that claim's checks.
"""
from __future__ import annotations

from typing import Any, Callable

from theory.claims import Check

FigureFn = Callable[[list[Check]], tuple[Any, dict[str, Any]]]

THEORY_FIGURES: list[tuple[str, str, FigureFn]] = []
