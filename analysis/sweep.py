"""Run an experiment's grid through the cache: skip finished keys, compute the rest with
one of the engines of :mod:`analysis.sweep_engines` (serial, process pool, Dask), which
yield finished outcomes to this process; it alone writes the cache.

Interrupt safety: each record is written atomically by the parent as soon as its config
finishes, and a config counts as done only when its file is a valid record. A sweep killed
at any moment (SIGKILL included) loses only the configs in flight, and its worker processes
die with it (:mod:`analysis.parentdeath`); rerunning finishes the grid, recomputing nothing
that was stored and storing every key exactly once.

Concurrent sweeps on one results folder (two ``reproduce`` at once): the parent claims each
config just before it starts it (:meth:`analysis.cache.ResultCache.claim`, a lock the kernel
drops when its holder dies), skips configs claimed by another process, and at the end waits
for those and picks up any that the other process left undone (it died, or the config
failed there). So each config is computed once, and the sweeps share the grid.
"""
from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from analysis.cache import ResultCache, unique_configs
from analysis.display import Display
from analysis.registry import Experiment
from analysis.sweep_engines import RUNNERS, Outcome, Task, choose_engine, utc_now

CLAIM_POLL_S = 0.5  # how often a sweep looks again at configs another process is computing


@dataclass
class SweepSummary:
    experiment: str
    engine: str
    total: int  # distinct configs in the grid
    cached: int  # already finished before this sweep
    computed: int = 0
    elsewhere: int = 0  # finished during this sweep by another process on the same cache
    failures: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0


def _stored(cache: ResultCache, config: Any, since: str | None) -> bool:
    """A valid record of ``config`` is stored (and, with ``since``, was finished after it)."""
    record = cache.load(config.key(), config)
    if record is None or since is None:
        return record is not None
    timing = record["timing"] if isinstance(record["timing"], dict) else {}
    return str(timing.get("finished_utc", "")) >= since


def _claimed(configs: list[Any], cache: ResultCache, since: str | None, skipped: list[Any]) -> Iterator[Any]:
    """The configs this process claims and finds not yet stored by another one, claimed one by
    one as the engine draws them; the rest go to ``skipped``."""
    for config in configs:
        if cache.claim(config.key()):
            if not _stored(cache, config, since):
                yield config
                continue
            cache.release(config.key())
        skipped.append(config)


def run_sweep(experiment: Experiment, configs: Iterable[Any], cache: ResultCache, device: str = "cpu",
              jobs: int = 1, engine: str | None = None, scheduler: str | None = None,
              force: bool = False, progress: bool = True, display: Display | None = None) -> SweepSummary:
    """Compute every config of ``configs`` not yet in ``cache`` (all of them with ``force``);
    configs that a concurrent sweep on the same cache is computing are waited for instead.
    Progress goes to ``display`` (a new one, on when ``progress``, if None)."""
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: must be at least 1")
    engine = choose_engine(engine, jobs, scheduler)
    grid = unique_configs(configs)
    cache.remove_stale_temp_files()
    pending = [c for c in grid if force or not cache.has(c.key(), c)]
    summary = SweepSummary(experiment.name, engine, total=len(grid), cached=len(grid) - len(pending))
    since = utc_now() if force else None  # with --force, only records made from now on are done
    start = time.perf_counter()
    shown = _sweep_display(display, progress, experiment.name, grid, cache, len(pending), jobs, engine)
    with shown as (shown, channel):
        position = {c.key(): i for i, c in enumerate(grid, 1)}
        try:
            while pending:
                skipped: list[Any] = []
                tasks = (Task(experiment.name, experiment.run, c, device, cache.root, channel,
                              f"config {position[c.key()]}/{len(grid)}")
                         for c in _claimed(pending, cache, since, skipped))
                first = next(tasks, None)
                if first is not None:  # nothing of ours to do: start no pool or cluster
                    with contextlib.closing(RUNNERS[engine](itertools.chain([first], tasks), jobs,
                                                             scheduler)) as outcomes:
                        for outcome in outcomes:
                            if outcome.record is not None:
                                cache.store(outcome.record)
                                summary.computed += 1
                            else:
                                summary.failures.append(outcome)
                            cache.release(outcome.key)  # after the store: a waiter then sees the record
                            shown.advance(_seconds(outcome),
                                          f"{len(summary.failures)} failed" if summary.failures else "")
                pending = [c for c in skipped if not _stored(cache, c, since)]
                summary.elsewhere += len(skipped) - len(pending)
                for _ in range(len(skipped) - len(pending)):
                    shown.advance(None, "done by another process")
                if pending:
                    shown.note(f"waiting for {len(pending)} config(s) another process is computing")
                    time.sleep(CLAIM_POLL_S)
        finally:
            cache.release_all()
    summary.seconds = time.perf_counter() - start
    return summary


def recorded_seconds(cache: ResultCache, configs: Iterable[Any]) -> list[float]:
    """How long each config of ``configs`` that is in ``cache`` took (its record's timing)."""
    out = []
    for config in configs:
        record = cache.load(config.key(), config)
        seconds = (record or {}).get("timing", {}).get("seconds")
        if isinstance(seconds, (int, float)):
            out.append(float(seconds))
    return out


def _seconds(outcome: Outcome) -> float | None:
    return outcome.record["timing"]["seconds"] if outcome.record is not None else None


@contextlib.contextmanager
def _sweep_display(display, progress, name, grid, cache, pending, jobs, engine):
    """The sweep's main bar (done/total configs, the time left estimated from the cache's
    recorded timings) and the channel its configs report through."""
    own = display is None
    display = Display(enabled=progress) if own else display
    display.start(name, len(grid), len(grid) - pending, recorded_seconds(cache, grid) if display.enabled else [],
                  parallel=jobs if engine != "serial" else 1)
    try:
        with (display.worker_queue() if engine == "process" and pending else contextlib.nullcontext()):
            yield display, display.channel(engine)
    finally:
        if own:
            display.close()
        else:
            display.finish()
