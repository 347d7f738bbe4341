"""What each running config is doing, as data and one line of text: a *lane* per config,
holding its label (``config 3/12``) and its open progress bars, innermost last. The lanes
change only through the events of ``analysis/progress.py`` (:func:`apply_event`); how they
are drawn (tqdm lines or status lines on stderr) is :mod:`analysis.display`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Bar:
    desc: str
    total: int | None
    n: int = 0
    postfix: str = ""


@dataclass
class Lane:
    label: str = ""
    bars: dict[int, Bar] = field(default_factory=dict)  # open bars in opening order, innermost last
    tq: Any = None  # its tqdm line on a terminal (set by the display)
    shown: int | None = None  # the bar that line shows


def apply_event(lanes: dict[Any, Lane], event: tuple) -> Any:
    """Apply ``(op, lane, ...)`` to ``lanes`` (ops: begin/end a config, open/set/close a bar);
    returns the lane key it changed, or None when the event was for no open lane."""
    op, key, *args = event
    lane = lanes.get(key)
    if lane is None:
        if op in ("end", "close", "set"):
            return None
        lane = lanes[key] = Lane()
    if op in ("begin", "end"):  # a config starts or ends in this lane: drop what is left
        lane.label, lane.bars, lane.shown = (args[0] if op == "begin" else ""), {}, None
    elif op == "open":
        lane.bars[args[0]] = Bar(args[1], args[2])
    elif op == "set" and args[0] in lane.bars:
        lane.bars[args[0]].n, lane.bars[args[0]].postfix = args[1], args[2]
    elif op == "close":
        lane.bars.pop(args[0], None)
    return key


def lane_text(lane: Lane, with_inner: bool = True) -> str:
    """``config 3/12 > split F 5/23 > LoRA AB train 40/300 (loss 0.3)``."""
    bars = list(lane.bars.values())
    parts = [lane.label or "idle"] + [f"{b.desc} {b.n}/{b.total}" for b in bars[:-1]]
    if bars and with_inner:
        inner = bars[-1]
        parts.append(f"{inner.desc} {inner.n}/{inner.total}" + (f" ({inner.postfix})" if inner.postfix else ""))
    elif bars:
        parts.append(bars[-1].desc)
    return " > ".join(parts)


def time_left(main: Bar, times: list[float], parallel: int, elapsed: float) -> str:
    """``est. ~3 min left`` for the items of ``main`` not done: the mean of the recorded
    ``times`` per item, ``parallel`` at a time, less the ``elapsed`` seconds since the last
    item finished; empty with nothing recorded or nothing left."""
    left = main.total - main.n if main.total is not None else 0
    if not times or left <= 0:
        return ""
    remaining = left * (sum(times) / len(times)) / min(parallel, left) - elapsed
    return f"est. {about(remaining)} left" if remaining > 0 else "est. time overrun"


def clock(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def about(seconds: float) -> str:
    """A rough duration: ``~12 s`` or ``~4 min``."""
    return f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{max(seconds, 1):.0f} s"
