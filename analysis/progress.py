"""How a running config reports progress: the ``progress`` argument that an experiment's
run function passes to the library (``toymodels/progress.py``) is :func:`current`, which
:func:`running` sets while the sweep runs that config, in this process (serial engine) or in
a worker process (``--jobs N``). Its bars become events ``(op, lane, ...)`` sent to the
display of ``analysis/display.py``, directly or through a queue; the Dask engine sends
none (its workers may be remote), nor does a sweep with progress off.
"""
from __future__ import annotations

import itertools
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

SEND_EVERY_S = 0.2  # a long bar's state (e.g. training steps) is sent at most this often
COARSE = 100  # a bar of at most this many items (LoRAs and scored models) sends every change

_CURRENT: "Reporter | None" = None


def current() -> "Reporter | None":
    """The ``progress`` argument for library calls of the config now running (None outside a
    sweep, or with progress off): pass it to ``toymodels`` functions as ``progress=``."""
    return _CURRENT


class Reporter:
    """A toymodels ``Progress`` whose bars become events for one lane; sending never raises
    into the computation (a failed send turns progress off for this config)."""

    def __init__(self, send: Callable[[tuple], Any], lane: Any):
        self._send, self.lane, self._ids = send, lane, itertools.count()

    def __call__(self, desc: str = "", total: int | None = None) -> "_EventBar":
        bar = _EventBar(self, next(self._ids), total is not None and total <= COARSE)
        self.emit("open", bar.id, desc, total)
        return bar

    def emit(self, op: str, *args: Any) -> None:
        try:
            self._send((op, self.lane, *args))
        except Exception:  # noqa: BLE001  (the parent is gone or stopping)
            self._send = _drop


def _drop(event: tuple) -> None:
    return None


class _EventBar:
    def __init__(self, reporter: Reporter, bar_id: int, coarse: bool):
        self._reporter, self.id, self.coarse, self.n, self.postfix, self._sent = reporter, bar_id, coarse, 0, "", 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        self._send_state()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        self._send_state()

    def _send_state(self) -> None:
        now = time.monotonic()
        if self.coarse or now - self._sent >= SEND_EVERY_S:
            self._sent = now
            self._reporter.emit("set", self.id, self.n, self.postfix)

    def close(self) -> None:
        self._reporter.emit("close", self.id)


@contextmanager
def running(channel: Any, label: str) -> Iterator[None]:
    """While a config runs: its lane shows ``label`` and :func:`current` reports to it."""
    global _CURRENT
    if channel is None:
        yield
        return
    reporter = Reporter(channel.put, os.getpid())
    reporter.emit("begin", label)
    _CURRENT = reporter
    try:
        yield
    finally:
        _CURRENT = None
        reporter.emit("end")
