"""One plot style for every figure, and the one way figures are saved.

``save_figure`` writes ``<dir>/<name>.png`` and ``.pdf`` plus ``<name>.json`` holding the
plotted numbers and the config keys they came from, all atomically (temp file + rename)
and with deterministic metadata so that reruns do not churn git.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

from analysis.atomic import atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "svg.hashsalt": "lora-limits",
}
# Colour per role, shared by all figures so a method looks the same everywhere.
COLORS = {
    "theory": "black",
    "sum": "#1f77b4",
    "average": "#ff7f0e",
    "routing": "#2ca02c",
    "bridge": "#d62728",
    "construction": "#9467bd",
    "sgd": "#8c564b",
    "control": "#7f7f7f",
}


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.4):
    """A figure in the house style: ``(fig, axes)``; axes is an array when ncols*nrows > 1."""
    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, (axes[0, 0] if ncols * nrows == 1 else axes.ravel())


def save_figure(fig, out_dir: Path | str, name: str, data: dict[str, Any], config: dict[str, Any]) -> list[Path]:
    """Save ``fig`` as PNG + PDF and its sidecar ``{"figure", "data", "config"}``; closes it."""
    out_dir = Path(out_dir)
    paths = []
    for ext, meta in (("png", {"Software": "lora-limits"}), ("pdf", {"Creator": "lora-limits", "CreationDate": None})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, metadata=meta, bbox_inches="tight")
        atomic_write_bytes(out_dir / f"{name}.{ext}", buffer.getvalue())
        paths.append(out_dir / f"{name}.{ext}")
    atomic_write_json(out_dir / f"{name}.json", {"figure": name, "data": data, "config": config})
    plt.close(fig)
    return paths + [out_dir / f"{name}.json"]
