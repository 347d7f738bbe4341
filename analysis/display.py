"""Progress on stderr: a main bar (the theory claims, or a sweep's configs with the time
left estimated from recorded timings) and one *lane* per running config: a line saying
what it is doing (base training, each LoRA, scoring), so that no stretch of a long run is
silent. All of it goes to stderr; ``Display(enabled=False)`` (``--quiet``) draws nothing.

A lane is fed by the events of ``analysis/progress.py`` (their meaning and a lane's text:
:mod:`analysis.progress_lanes`): applied directly (serial engine) or put by worker processes
on the queue of :meth:`Display.worker_queue`, which a thread of this process drains. On a terminal the main bar and the lanes are tqdm bars, redrawn every
second so that clocks and estimates keep moving; into a file or pipe, a plain status line is
written every few seconds instead (no control characters in logs).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from analysis.progress_lanes import Bar, Lane, apply_event, clock, lane_text, time_left

REDRAW_S = 1.0  # terminal: redraw clocks and estimates this often
LOG_EVERY_S = 4.0  # not a terminal: one status line at most this often (and after each finished item)


class Display:
    """Where progress is drawn (see the module docstring). Use as a context manager."""

    def __init__(self, enabled: bool = True, stream=None, tty: bool | None = None, log_every: float = LOG_EVERY_S):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.log_every = log_every
        self._lock = threading.RLock()
        self._lanes: dict[Any, Lane] = {}
        self._main: Bar | None = None
        self._main_tq: Any = None
        self._estimate: tuple[list[float], int, float] | None = None  # (seconds per item, parallel, since)
        self._started = self._last_log = time.monotonic()
        self._queue: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the main bar --------------------------------------------------------------------

    def start(self, desc: str, total: int, done: int = 0, seconds: list[float] | None = None,
              parallel: int = 1) -> None:
        """Open the main bar; ``seconds``: recorded times of items like these, for an estimate
        of the time left before the first item of this run finishes."""
        if not self.enabled:
            return
        with self._lock:
            self._main = Bar(desc, total, done)
            self._estimate = (list(seconds or []), max(1, parallel), time.monotonic())
            self._started = self._last_log = time.monotonic()
            if self.tty:
                from tqdm import tqdm

                self._main_tq = tqdm(total=total, initial=done, desc=desc, position=0, file=self.stream, dynamic_ncols=True,
                                     bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}{postfix}")
            self._draw_main()
            if not self.tty:  # a line at once: a stage never opens with seconds of silence (pool start-up)
                self._log()
        self._run_thread()

    def advance(self, seconds: float | None = None, note: str | None = None) -> None:
        """One more item of the main bar done (``seconds``: how long it took; ``note``: what
        the bar is on now, if it changed)."""
        if self._main is None:
            return
        with self._lock:
            self._main.n += 1
            self._main.postfix = self._main.postfix if note is None else note
            if self._estimate is not None:
                times, parallel, _ = self._estimate
                self._estimate = (times + ([seconds] if seconds is not None else []), parallel, time.monotonic())
            if self._main_tq is not None:
                self._main_tq.update(1)
            self._draw_main()
            if not self.tty:
                self._log()

    def note(self, text: str) -> None:
        """What the main bar is on now (e.g. the claim being checked)."""
        if self._main is not None:
            with self._lock:
                self._main.postfix = text
                self._draw_main()

    def finish(self) -> None:
        """Close the main bar and every lane (the next stage starts afresh)."""
        with self._lock:
            for lane in self._lanes.values():
                if lane.tq is not None:
                    lane.tq.close()
            self._lanes.clear()
            if self._main_tq is not None:
                self._draw_main()
                self._main_tq.close()
            self._main = self._main_tq = self._estimate = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        self.finish()

    def _left(self) -> str:
        """The estimated time left, from the mean recorded time per item, counting down."""
        if self._main is None or self._estimate is None:
            return ""
        times, parallel, since = self._estimate
        return time_left(self._main, times, parallel, time.monotonic() - since)

    def _draw_main(self) -> None:
        if self._main_tq is not None:
            self._main_tq.set_postfix_str(", ".join(t for t in (self._main.postfix, self._left()) if t), refresh=True)

    # --- lanes: one per running config ----------------------------------------------------

    def apply(self, event: tuple) -> None:
        """Apply one event of ``analysis/progress.py``: ``(op, lane, ...)``."""
        if not self.enabled:
            return
        with self._lock:
            key = apply_event(self._lanes, event)
            if key is not None and self.tty:
                self._draw_lane(key, self._lanes[key])

    def _draw_lane(self, key: Any, lane: Lane) -> None:
        from tqdm import tqdm

        if lane.tq is None:
            lane.tq = tqdm(total=None, position=1 + list(self._lanes).index(key), leave=False, file=self.stream,
                           dynamic_ncols=True, bar_format="{desc}")
        inner_id = next(reversed(lane.bars), None)
        name = f"w{1 + list(self._lanes).index(key)} " if len(self._lanes) > 1 else ""
        if inner_id is None:
            lane.shown = None
            lane.tq.bar_format = "{desc}"
            lane.tq.set_description_str(name + lane_text(lane), refresh=True)
            return
        inner = lane.bars[inner_id]
        if lane.shown != inner_id:  # a new innermost bar: restart the counter, rate and clock
            lane.shown = inner_id
            lane.tq.bar_format = "{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}"
            lane.tq.reset(total=inner.total)
        lane.tq.set_description_str(name + lane_text(lane, with_inner=False), refresh=False)
        lane.tq.set_postfix_str(inner.postfix, refresh=False)
        lane.tq.update(inner.n - lane.tq.n)
        lane.tq.refresh()

    # --- where events come from; the pump thread: worker events, redraws, status lines ----

    def channel(self, engine: str) -> Any:
        """Where the configs of a sweep on ``engine`` send their events: this display (serial),
        the queue of :meth:`worker_queue` (process), or nowhere (dask, or progress off)."""
        if not self.enabled or engine == "dask":
            return None
        return _Local(self) if engine == "serial" else self._queue

    @contextmanager
    def worker_queue(self) -> Iterator[Any]:
        """A queue that worker processes can put events on (None when disabled), pumped by a
        thread of this process; its manager process ignores Ctrl-C (the CLI handles it)."""
        if not self.enabled:
            yield None
            return
        import multiprocessing
        from multiprocessing.managers import SyncManager

        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(_manager_init, (os.getpid(),))
        try:
            self._queue = manager.Queue()
            self._run_thread()
            yield self._queue
        finally:
            self._queue = None
            manager.shutdown()

    def _run_thread(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._pump, name="progress", daemon=True)
            self._thread.start()

    def _pump(self) -> None:
        import queue as queue_module

        last_redraw = time.monotonic()
        while not self._stop.is_set():
            source = self._queue
            try:
                if source is None:
                    self._stop.wait(0.2)
                else:
                    self.apply(source.get(timeout=0.2))
                now = time.monotonic()
                with self._lock:
                    if self.tty and now - last_redraw >= REDRAW_S and self._main is not None:
                        last_redraw = now
                        self._draw_main()
                        for lane in self._lanes.values():
                            if lane.tq is not None:
                                lane.tq.refresh()
                    elif not self.tty and now - self._last_log >= self.log_every and self._main is not None:
                        self._log()
            except queue_module.Empty:
                pass
            except (EOFError, OSError):  # the manager went away (shutdown, Ctrl-C) or stderr did
                self._stop.wait(0.2)

    def _log(self) -> None:
        """One plain status line (not a terminal)."""
        main = self._main
        head = f"[{clock(time.monotonic() - self._started)}] {main.desc} {main.n}/{main.total}"
        tail = [t for t in (main.postfix, self._left()) if t]
        named = len(self._lanes) > 1
        lanes = [f"w{i} " * named + lane_text(lane) for i, lane in enumerate(self._lanes.values(), 1)
                 if lane.label]
        line = " | ".join([head + (f" ({', '.join(tail)})" if tail else "")] + lanes)
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):  # stderr closed: progress is not worth failing for
            pass
        self._last_log = time.monotonic()


class _Local:
    """The channel of the serial engine: events go straight to the display."""

    def __init__(self, display: Display):
        self.put = display.apply


def _manager_init(parent: int) -> None:
    """In the queue's manager process: leave Ctrl-C to the CLI, and exit when the CLI is gone
    (killed with SIGKILL, it cannot shut the manager down)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()
