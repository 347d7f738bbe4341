"""Plain-text tables for the terminal (one formatter for every verb)."""
from __future__ import annotations

import math
import sys
from typing import Any, Sequence


def cell(x: Any) -> str:
    """Numbers to 3 significant digits, lists comma-joined, anything else as ``str``."""
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3g}"
    if isinstance(x, list):
        return ",".join(map(str, x))
    return str(x)


def print_table(head: Sequence[str], rows: Sequence[Sequence[Any]], out=None,
                max_width: dict[int, int] | None = None, rule: bool = False) -> None:
    """Left-aligned columns; ``max_width[i]`` truncates column i with '...'."""
    out = out or sys.stdout  # resolved per call: a default of sys.stdout would bind it at import
    cells = [[cell(c) for c in r] for r in rows]
    for i, limit in (max_width or {}).items():
        for r in cells:
            if len(r[i]) > limit:
                r[i] = r[i][: limit - 3] + "..."
    widths = [max(len(r[i]) for r in cells + [list(head)]) for i in range(len(head))]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line, file=out)
    if rule:
        print("-" * len(line), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
