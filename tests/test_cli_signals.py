"""Pipes and signals end cleanly: a closed stdout (``| head``), Ctrl-C and SIGTERM give no
traceback, stop every worker process, and leave only whole records in the result cache."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.atomic import is_temp_file

REPO = Path(__file__).resolve().parents[1]
THEORY = [sys.executable, "-m", "analysis", "theory", "--json", "--claim", "MERGE-1", "--no-figures", "--quiet"]


def test_closed_stdout_exits_141_without_a_traceback():
    """The reader is gone before anything is written: every write fails with EPIPE."""
    proc = subprocess.Popen(THEORY, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    proc.stderr.close()
    assert proc.returncode == 141 and err == "", err


def test_theory_json_piped_to_head():
    """``lora-limits theory --json | head -1``: head gets the first line, the CLI ends quietly
    (0 when its output fitted in the pipe before head left, else 141)."""
    theory = subprocess.Popen(THEORY[:-1], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=theory.stdout, stdout=subprocess.PIPE)
    theory.stdout.close()  # only head reads it now
    first = head.communicate(timeout=120)[0].decode()
    err = theory.stderr.read().decode()
    theory.wait(timeout=60)
    theory.stderr.close()
    assert first == "{\n"
    assert theory.returncode in (0, 141) and "Traceback" not in err and "Error" not in err, err


def _session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the CLI, its workers, the progress queue's manager)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: session id; Z: already dead
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.parametrize("jobs,signum,to_group,code,word", [
    pytest.param(1, signal.SIGINT, True, 130, "interrupted", id="ctrl-c,serial"),
    pytest.param(2, signal.SIGINT, True, 130, "interrupted", id="ctrl-c,jobs=2"),
    pytest.param(1, signal.SIGTERM, False, 143, "terminated", id="sigterm,serial"),
    pytest.param(2, signal.SIGTERM, False, 143, "terminated", id="sigterm,jobs=2"),
])
def test_signal_mid_sweep_ends_cleanly(tmp_path, jobs, signum, to_group, code, word):
    """Ctrl-C reaches the whole process group (as a terminal sends it); SIGTERM only the CLI
    (as ``kill PID`` does). Either way: prompt exit, one line, no traceback, no process left,
    and every file in the cache a whole record."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "analysis", "run", "_selftest", "--profile", "paper", "--device", "cpu",
               "--set", "sleep_s=0.4", "--jobs", str(jobs), "--results", str(results), "--no-figures"]
    proc = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    folder = results / "_selftest"
    deadline = time.monotonic() + 120
    try:
        while not (folder.is_dir() and any(p.suffix == ".json" for p in folder.iterdir())):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep stored nothing"
            time.sleep(0.02)
        time.sleep(0.3)  # mid-config
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        err = proc.communicate(timeout=30)[1].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"lora-limits run: {word}; finished results are kept" in err, err
    for _ in range(100):  # workers and the manager are gone within seconds
        if not _session_processes(proc.pid):
            break
        time.sleep(0.1)
    assert not _session_processes(proc.pid), "processes outlived the CLI"
    files = list(folder.iterdir())
    assert files and not any(is_temp_file(p) for p in files)
    for path in files:
        assert json.loads(path.read_text())["key"] == path.stem
