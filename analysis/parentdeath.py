"""Worker processes that die with the process that started them, even when it is SIGKILLed.

A killed sweep (``kill -9``, the OOM killer) runs no cleanup, so a pool cannot stop its
workers; without help they finish the configs already queued to them, for nobody, and keep
the multiprocessing resource tracker alive (it exits only once every process holding its
pipe is gone). Each worker therefore arms two independent triggers at start-up:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills the worker at once when
  its parent dies. The signal fires on the death of the parent *thread* that created the
  worker; :func:`analysis.sweep_engines._process` creates workers only from the thread that runs the
  sweep (inside ``submit``), which outlives the pool, so it fires only when the process dies.
- everywhere (and as a backstop): a daemon thread that polls ``os.getppid()`` every
  :data:`POLL_S` seconds and exits when the worker has been re-parented (its parent died).

Dask's ``LocalCluster`` needs neither: its worker processes already watch their nanny
through a pipe (``distributed.process``), and the nannies live inside the sweep process.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

POLL_S = 0.5  # the portable trigger's delay: a worker outlives its parent by at most this
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Call at worker start-up (a pool initializer). ``parent_pid`` is the pid of the process
    that created this worker, read there (``os.getpid()``) and passed in: comparing it with
    ``os.getppid()`` here catches a parent that died before the triggers were armed."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the watchdog still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os._exit(1)  # no cleanup: the parent that would use this worker's results is gone
