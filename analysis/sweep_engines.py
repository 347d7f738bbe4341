"""How a sweep computes its configs: the engines (each yields finished outcomes to the
parent, which alone writes the cache, :mod:`analysis.sweep`):

- ``serial``: in this process, one config after another (``--jobs 1``, the default);
- ``process``: ``--jobs N`` worker processes on this machine (``concurrent.futures`` with
  the ``spawn`` start method: a fresh interpreter per worker, safe with torch threads);
- ``dask``: Dask distributed, for users who outgrow one machine: a ``LocalCluster`` of N
  single-threaded worker processes by default, or any running cluster via
  ``--scheduler tcp://HOST:8786``. Dask was chosen over Ray because it is a pure-Python
  install (~39 MB with its dependencies, ~6 s, no change to torch) whose local cluster
  starts in ~3 s, runs our plain module-level functions unchanged and needs no shared
  file system, since results come back to this process; Ray ships a 79 MB compiled wheel
  (plus a protobuf/grpc stack) and a heavier runtime for what is here a map over configs.
  Dask is in the ``dev`` extra; it is imported only when ``--engine dask`` is used.

Worker processes die with the sweep process (:mod:`analysis.parentdeath`) and leave Ctrl-C
to it. :func:`compute_record` runs one config anywhere and turns an exception into a
failed :class:`Outcome`, so one bad config never stops the grid.
"""
from __future__ import annotations

import itertools
import json
import os
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from analysis.atomic import to_json_text
from analysis.cache import make_record
from analysis.progress import running

ENGINES = ("serial", "process", "dask")


@dataclass(frozen=True)
class Task:
    experiment: str
    run: Callable[[Any, str, Path], dict[str, Any]]  # module-level, so workers import it by name
    config: Any
    device: str
    results: Path  # the results folder, passed to ``run`` (its shared model caches live there)
    progress: Any = None  # where the config's progress events go (analysis/progress.py), or None
    label: str = ""  # how its progress line names it, e.g. "config 3/12"


@dataclass(frozen=True)
class Outcome:
    key: str
    record: dict[str, Any] | None  # None when the run raised
    error: str | None = None  # the worker's traceback


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def compute_record(task: Task) -> Outcome:
    """Run one config (in a worker) and return its record; exceptions become a failed outcome."""
    _leave_ctrl_c_to_the_parent()
    key = task.config.key()
    started, t0 = utc_now(), time.perf_counter()
    try:
        with running(task.progress, task.label):
            result = task.run(task.config, task.device, task.results)
            result = json.loads(to_json_text(result))  # a JSON-native copy
        if not isinstance(result, dict):
            raise TypeError(f"{task.experiment}.run returned {type(result).__name__}, expected a dict")
    except Exception:  # noqa: BLE001  (reported per config; the sweep goes on)
        return Outcome(key, None, traceback.format_exc())
    timing = {"started_utc": started, "finished_utc": utc_now(), "seconds": time.perf_counter() - t0,
              "pid": os.getpid()}
    return Outcome(key, make_record(task.experiment, task.config, result, timing, task.device))


def _leave_ctrl_c_to_the_parent() -> None:
    """In a worker process: ignore SIGINT. Ctrl-C reaches the whole process group; the CLI
    handles it and stops the workers, which would otherwise each print a traceback."""
    import multiprocessing
    import signal
    import threading

    if multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _serial(tasks: Iterable[Task], jobs: int, scheduler: str | None) -> Iterator[Outcome]:
    for task in tasks:
        yield compute_record(task)


def _limit_threads(threads: int) -> None:
    """N workers share the cores instead of each taking all of them. The environment reaches
    libraries loaded later; torch is usually imported already by the time a worker's
    initializer runs (unpickling the task imports the registry, the verdicts and their
    seeds), so its intra-op pool is set directly: 2 workers x 2 threads on 2 cores ran the
    toy training steps ~4x slower in CPU time than 1 thread each."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _init_worker(threads: int, parent_pid: int) -> None:
    """Process-pool initializer: share the cores, and die with the sweep process."""
    from analysis.parentdeath import die_with_parent

    _limit_threads(threads)
    die_with_parent(parent_pid)


def _process(tasks: Iterable[Task], jobs: int, scheduler: str | None) -> Iterator[Outcome]:
    """At most ``jobs`` configs in flight: each task is drawn (so claimed) only when a worker
    is free, which lets a concurrent sweep take the rest. Workers are created inside
    ``submit``, i.e. by the thread running this generator, which outlives the pool (see
    :mod:`analysis.parentdeath` for why that thread matters)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads, os.getpid()))
    tasks, running, failed = iter(tasks), {}, []
    finished = False
    try:
        while True:
            for task in itertools.islice(tasks, jobs - len(running)):
                try:
                    running[pool.submit(compute_record, task)] = task
                except BrokenProcessPool as exc:  # a worker died earlier: the pool takes no more
                    failed.append(Outcome(task.config.key(), None, f"worker process failed: {exc!r}"))
            if failed:
                yield failed.pop()
                continue
            if not running:
                break
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                task = running.pop(future)
                try:
                    yield future.result()
                except Exception as exc:  # noqa: BLE001  (a worker died, e.g. out of memory)
                    yield Outcome(task.config.key(), None, f"worker process failed: {exc!r}")
        finished = True
    finally:
        if not finished:  # interrupted: stop the workers now rather than wait for their configs
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _dask(tasks: Iterable[Task], jobs: int, scheduler: str | None) -> Iterator[Outcome]:
    import logging

    from dask.distributed import Client, LocalCluster, as_completed

    tasks = list(tasks)  # claims every config at once: Dask schedules them itself
    cluster = None if scheduler else LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                                  dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(scheduler or cluster)
    try:
        futures = [client.submit(compute_record, t, key=f"{t.experiment}-{t.config.key()}", pure=False)
                   for t in tasks]
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001  (e.g. KilledWorker: the worker died)
                yield Outcome(future.key.removeprefix(f"{tasks[0].experiment}-"), None,
                              f"dask worker failed: {exc!r}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


RUNNERS = {"serial": _serial, "process": _process, "dask": _dask}


def choose_engine(engine: str | None, jobs: int, scheduler: str | None) -> str:
    """``--engine`` if given; else dask with a scheduler, process pool for N > 1 jobs, serial otherwise."""
    if engine is None:
        return "dask" if scheduler else "process" if jobs > 1 else "serial"
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; must be one of {', '.join(ENGINES)}")
    if scheduler and engine != "dask":
        raise ValueError(f"a scheduler address needs the dask engine, not {engine!r}")
    return engine
