"""A sweep killed with SIGKILL at any moment resumes and finishes: every key stored exactly
once, every file a valid record, nothing that was finished before the kill recomputed. Its
worker processes die with it, even when only the parent is killed. Two sweeps on one
results folder at once compute each key once."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from analysis import registry
from analysis.atomic import is_temp_file
from analysis.cache import ResultCache
from analysis.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
SELFTEST = registry.get("_selftest")


def _command(results: Path, profile: str, sleep_s: float, jobs: int) -> list[str]:
    return [sys.executable, "-m", "analysis", "run", "_selftest", "--profile", profile, "--device", "cpu",
            "--set", f"sleep_s={sleep_s}", "--jobs", str(jobs), "--results", str(results),
            "--no-figures", "--quiet"]


def _finished(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.json") if not is_temp_file(p)] if folder.is_dir() else []


def _start_and_kill(command: list[str], folder: Path, kill_after: int, timeout: float = 60) -> None:
    """Start the sweep in its own process group; SIGKILL the whole group once ``kill_after``
    records exist (workers die with it, as under the OOM killer or a lost node)."""
    proc = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while len(_finished(folder)) < kill_after:
            assert proc.poll() is None, f"sweep ended before the kill: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "sweep made no progress"
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.stem: (p.read_bytes(), p.stat().st_mtime_ns) for p in _finished(folder)}


@pytest.mark.parametrize("jobs,profile,sleep_s,kills", [
    pytest.param(1, "paper", 0.08, (3, 11), id="serial"),
    pytest.param(1, "paper", 0.01, (4, 12), id="serial-rapid-writes"),  # kills often land mid-write
    pytest.param(2, "quick", 0.25, (2,), id="jobs=2"),
])
def test_sigkill_mid_grid_then_resume(tmp_path, jobs, profile, sleep_s, kills):
    results = tmp_path / "results"
    folder = results / "_selftest"
    grid = {c.key(): c for c in (dataclasses.replace(c, sleep_s=sleep_s) for c in SELFTEST.configs(profile))}
    command = _command(results, profile, sleep_s, jobs)
    before_last_kill: dict[str, tuple[bytes, int]] = {}
    for kill_after in kills:
        _start_and_kill(command, folder, kill_after)
        before_last_kill = _snapshot(folder)
        assert kill_after <= len(before_last_kill) < len(grid)
        assert set(before_last_kill) <= set(grid)
        for key, (text, _) in before_last_kill.items():  # every file already there is a whole record
            assert json.loads(text)["key"] == key
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{len(grid)} configs, {len(before_last_kill)} cached, {len(grid) - len(before_last_kill)} computed" \
        in done.stdout
    cache = ResultCache(results, "_selftest")
    assert sorted(cache.stored_keys()) == sorted(grid)  # each key exactly once, no strays
    assert all(cache.has(k, c) for k, c in grid.items())
    after = _snapshot(folder)
    for key, (text, mtime) in before_last_kill.items():  # finished before the kill: untouched
        assert after[key] == (text, mtime)


# --- workers die with their parent -------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, start time)`` of a live process, None once it is gone. A zombie
    (state Z) has exited and only waits for its new parent to reap it, so it counts as gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else (fields[0], int(fields[1]), int(fields[19]))


def _children(pid: int) -> dict[int, int]:
    """``pid -> start time`` of every live child of ``pid`` (psutil-free: scans /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[1] == pid:
            found[int(entry.name)] = stat[2]
    return found


def _alive(processes: dict[int, int]) -> list[int]:
    """Those still alive (same pid AND same start time, so a reused pid does not count)."""
    return [pid for pid, start in processes.items() if (stat := _stat(pid)) is not None and stat[2] == start]


def _wait_gone(processes: dict[int, int], within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while (alive := _alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _markers(trace: Path) -> list[tuple[str, int]]:
    """``(key, pid)`` of every computation started (``SelftestConfig.trace_dir``)."""
    return [(p.name.split(".")[0], int(p.name.split(".")[1])) for p in trace.iterdir()]


def _kill_parent_only(parent: subprocess.Popen, descendants: dict[int, int], within_s: float) -> list[int]:
    """SIGKILL ``parent`` alone (not its group); the descendants still alive ``within_s`` later."""
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    return _wait_gone(descendants, within_s)


@contextlib.contextmanager
def _no_orphans(parent: subprocess.Popen, descendants: dict[int, int]):
    """On the way out, even when the test fails: kill ``parent`` and every one of
    ``descendants`` (filled in by the test) still alive, and close the pipes."""
    try:
        yield
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _alive(descendants):
            os.kill(pid, signal.SIGKILL)
        parent.communicate()  # after the kills: a live orphan would hold the pipes open


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

# A sweep of the quick _selftest grid in its own process, lighter to start than the CLI (which
# imports every experiment); prints "computed elsewhere failed".
SWEEP_SCRIPT = """
import dataclasses, sys
from analysis.cache import ResultCache
from analysis.sweep import run_sweep
from analysis.selftest import EXPERIMENT
from analysis.sweep import run_sweep
results, engine, jobs, trace, hold = sys.argv[1:]
configs = [dataclasses.replace(c, trace_dir=trace, hold_file=hold) for c in EXPERIMENT.configs("quick")]
s = run_sweep(EXPERIMENT, configs, ResultCache(results, EXPERIMENT.name), jobs=int(jobs), engine=engine,
              progress=False)
print(s.computed, s.elsewhere, len(s.failures))
"""


def _held_grid(trace: Path, hold: Path) -> list:
    return [dataclasses.replace(c, trace_dir=str(trace), hold_file=str(hold)) for c in SELFTEST.configs("quick")]


def _start_sweep(results: Path, engine: str, jobs: int, trace: Path, hold: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SWEEP_SCRIPT, str(results), engine, str(jobs), str(trace),
                             str(hold)], cwd=REPO, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@needs_proc
@pytest.mark.parametrize("engine", [
    pytest.param("process", id="process-pool"),
    pytest.param("dask", id="dask-local-cluster"),
])
def test_sigkill_of_the_parent_alone_takes_its_workers_with_it(tmp_path, engine):
    """kill -9 of only the sweep process (not its group): both workers (held mid-config) and
    the resource tracker are gone within 5 s; the rerun stores every key exactly once."""
    if engine == "dask":
        pytest.importorskip("distributed", reason="Dask is in the dev extra")
    results, trace, hold = tmp_path / "results", tmp_path / "trace", tmp_path / "hold"
    trace.mkdir()
    hold.touch()
    proc = _start_sweep(results, engine, 2, trace, hold)
    children: dict[int, int] = {}
    workers: set[int] = set()
    try:
        with _no_orphans(proc, children):
            deadline = time.monotonic() + 90
            while len(workers := {pid for _, pid in _markers(trace)}) < 2:  # both workers inside a config
                assert proc.poll() is None, f"sweep ended early: {proc.stderr.read()}"
                assert time.monotonic() < deadline, "the workers never started"
                time.sleep(0.05)
            children.update(_children(proc.pid))
            assert workers <= set(children) and len(children) >= 3  # two workers + the resource tracker
            assert _kill_parent_only(proc, children, within_s=5.0) == []
    finally:
        hold.unlink()
    cache = ResultCache(results, "_selftest")
    assert cache.stored_keys() == []  # both held configs died unfinished
    summary = run_sweep(SELFTEST, _held_grid(trace, hold), cache, progress=False)
    assert (summary.computed, summary.failures) == (8, [])
    assert len(cache.stored_keys()) == 8
    assert all(json.loads(cache.path(k).read_text())["key"] == k for k in cache.stored_keys())
    markers = _markers(trace)
    assert len([pid for _, pid in markers if pid in workers]) == 2  # the killed workers started nothing more
    rerun = Counter(key for key, pid in markers if pid not in workers)
    assert rerun == {key: 1 for key in cache.stored_keys()}  # the rerun computed each key once


# A parent that starts a child running CHILD_SCRIPT, prints the child's pid, and sleeps.
PARENT_SCRIPT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(120)
"""
CHILD_SCRIPT = """
import os, sys, time
from analysis import parentdeath
{disable}
parentdeath.die_with_parent(os.getppid())
print("armed", flush=True)
time.sleep(120)
"""


@needs_proc
@pytest.mark.parametrize("disable", [
    pytest.param("parentdeath.POLL_S = 1e6", id="pdeathsig-alone"),
    pytest.param("sys.platform = 'darwin'", id="watchdog-alone"),  # the portable trigger
])
def test_each_trigger_alone_kills_the_orphan(disable):
    """Both triggers of die_with_parent work on their own: Linux's parent-death signal (the
    watchdog effectively off) and the getppid watchdog (prctl skipped, as off Linux)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, CHILD_SCRIPT.format(disable=disable)],
                              cwd=REPO, start_new_session=True, text=True, stdout=subprocess.PIPE)
    child: dict[int, int] = {}
    with _no_orphans(parent, child):
        pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "armed"
        child[pid] = _stat(pid)[2]
        assert _kill_parent_only(parent, child, within_s=3.0) == []


def test_a_parent_dead_before_arming_ends_the_worker_at_once():
    """The pid the pool passed is not our parent any more (it died before the triggers were
    armed, so no signal will come): exit instead of running on."""
    done = subprocess.run([sys.executable, "-c", "from analysis.parentdeath import die_with_parent\n"
                           "die_with_parent(-1)\nprint('survived')"], cwd=REPO, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (1, "")


# --- two sweeps on one results folder at once ----------------------------------------------

def test_two_sweep_processes_on_one_cache_share_the_grid_and_compute_each_key_once(tmp_path):
    """As two `reproduce` at once: a 2-worker sweep and a serial `run`, both held until each
    has a config in hand, then released: every key is computed by exactly one of them (markers
    across all processes), stored once, valid; both finish and their counts add up."""
    results, trace, hold = tmp_path / "results", tmp_path / "trace", tmp_path / "hold"
    trace.mkdir()
    hold.touch()
    cli = _command(results, "quick", 0.0, 1) + ["--set", f"trace_dir={trace}", "--set", f"hold_file={hold}"]
    procs = [_start_sweep(results, "process", 2, trace, hold),
             subprocess.Popen(cli, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    try:
        deadline = time.monotonic() + 90
        while len(_markers(trace)) < 3:  # two configs in the pool's workers, one in the serial run
            assert all(p.poll() is None for p in procs), "a sweep ended early"
            assert time.monotonic() < deadline, "the sweeps never started"
            time.sleep(0.05)
    finally:
        hold.unlink()
        outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    computed, elsewhere, failed = map(int, outputs[0][0].split())
    line = re.search(r"8 configs, 0 cached, (\d+) computed, (\d+) by another process, 0 failed", outputs[1][0])
    assert line, outputs[1][0]
    assert failed == 0 and computed >= 2 and int(line[1]) >= 1  # both did work
    assert computed + int(line[1]) == 8 and computed + elsewhere == 8 and int(line[1]) + int(line[2]) == 8
    cache = ResultCache(results, "_selftest")
    assert Counter(key for key, _ in _markers(trace)) == {key: 1 for key in cache.stored_keys()}
    assert len(cache.stored_keys()) == 8
    assert all(cache.has(c.key(), c) for c in _held_grid(trace, hold))
    assert not list(cache.folder.glob(".*.lock"))  # every claim released and its file removed
