"""One plot style for every figure, and the one way figures are saved.

Rules every figure follows (``tests/test_figures.py`` renders each figure and checks them):

- Series are told apart without colour (greyscale prints, colour-blind readers): each role
  has a colour AND a marker (:func:`role`); a second factor (library, probe, prompt set) is a
  line style plus filled / open markers (:data:`DASHED`, :data:`DOTTED`, ``OPEN``); series
  with no role take the next entry of :data:`CYCLE`, which changes colour, line style and
  marker together. Legend keys are long enough (``legend.handlelength``) to show the dashes
  beside the marker.
- Legends sit outside the data: :func:`legend_below` (a figure legend the constrained layout
  makes room for) or :func:`legend_right`.
- Interval bands are clipped to the metric's range (:func:`band`): a share cannot leave [0, 1].
- A panel with nothing to see says why, in place (:func:`note_empty`).

``save_figure`` writes ``<dir>/<name>.png`` and ``.pdf`` plus ``<name>.json`` holding the
plotted numbers and the config keys they came from, all atomically (temp file + rename)
and with deterministic metadata so that reruns are byte-identical and do not churn git.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from cycler import cycler

from analysis.atomic import atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

# Colour and marker per role, shared by all figures so a method looks the same everywhere
# (in colour by its hue, in grey by its marker).
COLORS = {
    "theory": "black",
    "sum": "#1f77b4",
    "average": "#ff7f0e",
    "routing": "#2ca02c",
    "bridge": "#d62728",
    "construction": "#9467bd",
    "sgd": "#8c564b",
    "control": "#7f7f7f",
    "ties": "#17becf",
    "svd": "#bcbd22",
}
MARKERS = {"theory": "", "sum": "o", "average": "s", "routing": "^", "bridge": "D", "construction": "p",
           "sgd": "X", "control": "v", "ties": "<", "svd": ">"}
# Named line styles (their dash patterns, set in STYLE, are long enough to show beside a marker).
SOLID, DASHED, DOTTED, DASHDOT = "-", "--", ":", "-."
OPEN = {"markerfacecolor": "none"}  # the second level of a factor: open markers (a filled one beneath shows)
# Series without a role: colour, line style and marker change together (8 distinct entries).
CYCLE = (cycler(color=["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"])
         + cycler(linestyle=[SOLID, DASHED, DOTTED, DASHDOT] * 2)
         + cycler(marker=["o", "s", "^", "D", "v", "P", "X", "*"]))

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.grid": True,
    "axes.prop_cycle": CYCLE,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.markersize": 4.5,
    "lines.dashed_pattern": [5.0, 2.0],  # matplotlib's default (3.7, 1.6) hides behind a marker
    "lines.dotted_pattern": [1.0, 1.6],
    "lines.dashdot_pattern": [6.0, 2.0, 1.5, 2.0],
    "legend.fontsize": 8,
    "legend.frameon": False,
    "legend.handlelength": 3.6,  # room for a dash pattern on both sides of the marker
    "svg.hashsalt": "lora-limits",
}
EMPTY_NOTE = "empty-panel-note"  # gid of the text :func:`note_empty` writes (the figure test looks for it)


def role(name: str, **overrides) -> dict[str, Any]:
    """Plot keywords of a role: its colour and marker (``theory`` has no marker)."""
    return {"color": COLORS[name], "marker": MARKERS[name], **overrides}


def cycle_style(i: int) -> dict[str, Any]:
    """The ``i``-th entry of :data:`CYCLE` (colour, line style, marker), for series without a role."""
    entries = list(CYCLE)
    return dict(entries[i % len(entries)])


HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo", "+++", "---")  # bar series told apart in greyscale


def bar_style(color: str, hatch: str = "", filled: bool = True) -> dict[str, Any]:
    """Bar keywords that differ in grey as well as in colour: filled, filled light with a
    hatch (the hatch drawn in ``color``), or white with a hatch."""
    if filled and not hatch:
        face = color
    else:
        face = to_rgba(color, 0.3) if filled else "white"
    return {"facecolor": face, "edgecolor": color, "hatch": hatch or None, "linewidth": 0.8}


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.4):
    """A figure in the house style with the constrained layout (which makes room for titles,
    colour bars and legends placed outside the panels): ``(fig, axes)``; axes is an array
    when ncols*nrows > 1."""
    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")
    return fig, (axes[0, 0] if ncols * nrows == 1 else axes.ravel())


def _collect(fig, handles, labels):
    if handles is not None:
        return list(handles), list(labels) if labels is not None else [h.get_label() for h in handles]
    seen: dict[str, Any] = {}
    for ax in fig.axes:  # every labelled artist of every panel, first occurrence of a label wins
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen)


def legend_below(fig, handles: Sequence | None = None, labels: Sequence[str] | None = None,
                 ncol: int | None = None, title: str | None = None, **kw):
    """One legend for the whole figure under the panels, outside every axes (the constrained
    layout shrinks the panels to make room). Without ``handles``: every labelled artist of
    every panel, once per label."""
    handles, labels = _collect(fig, handles, labels)
    ncol = ncol or min(len(labels), 3)
    return fig.legend(handles, labels, loc="outside lower center", ncol=max(ncol, 1), title=title,
                      title_fontsize=8, **kw)


def legend_right(fig, handles: Sequence | None = None, labels: Sequence[str] | None = None,
                 title: str | None = None, **kw):
    """As :func:`legend_below`, to the right of the panels (for one narrow panel)."""
    handles, labels = _collect(fig, handles, labels)
    return fig.legend(handles, labels, loc="outside right center", title=title, title_fontsize=8, **kw)


def band(ax, x, low, high, color, limits: tuple[float, float] = (0.0, 1.0), alpha: float = 0.15):
    """A confidence band clipped to the metric's range ``limits`` (a 95% t-interval of a share
    over 2-3 seeds easily reaches past 0 or 1, which no share can); nothing where the bounds
    are not finite (one seed: no interval exists)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    finite = np.isfinite(low) & np.isfinite(high)
    if not finite.any():
        return None
    return ax.fill_between(np.asarray(x)[finite], np.clip(low[finite], *limits), np.clip(high[finite], *limits),
                           color=color, alpha=alpha, linewidth=0)


def is_empty(values) -> bool:
    """True when ``values`` hold nothing to see: no finite number, or only zeros."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    return x.size == 0 or not np.any(x != 0)


def note_empty(ax, text: str) -> None:
    """Say in the panel itself why it shows nothing (all zero, or no data)."""
    ax.text(0.5, 0.55, text, transform=ax.transAxes, ha="center", va="center", fontsize=7.5, wrap=True,
            gid=EMPTY_NOTE, bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": COLORS["control"],
                                  "alpha": 0.9})


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
