"""A sweep killed with SIGKILL at any moment resumes and finishes: every key stored exactly
once, every file a valid record, nothing that was finished before the kill recomputed."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis import registry
from analysis.atomic import is_temp_file
from analysis.cache import ResultCache

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
