"""The result cache: atomic records, invalid files recomputed, temp files ignored, --force."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from analysis import registry
from analysis.atomic import atomic_write_json
from analysis.cache import MissingResultsError, ResultCache, load_results
from analysis.sweep import run_sweep
from analysis.sweep_engines import Task, compute_record

SELFTEST = registry.get("_selftest")


def _sweep(tmp_path, configs=None, **kwargs):
    cache = ResultCache(tmp_path, SELFTEST.name)
    summary = run_sweep(SELFTEST, configs or SELFTEST.configs("quick"), cache, progress=False, **kwargs)
    return cache, summary


def test_record_holds_config_key_result_timing_versions(tmp_path):
    cache, summary = _sweep(tmp_path)
    assert (summary.total, summary.cached, summary.computed) == (8, 0, 8)
    config = SELFTEST.configs("quick")[0]
    record = json.loads(cache.path(config.key()).read_text())
    assert record["key"] == config.key() and record["experiment"] == "_selftest"
    assert record["config"] == config.to_dict()
    assert record["result"] == json.loads(json.dumps(SELFTEST.run(config, "cpu", tmp_path), default=lambda a: a.tolist()))
    assert record["timing"]["seconds"] >= 0 and record["timing"]["finished_utc"] >= record["timing"]["started_utc"]
    assert {"python", "torch", "numpy", "lora-limits", "cache_version"} <= set(record["versions"])


def test_rerun_skips_finished_keys(tmp_path):
    cache, _ = _sweep(tmp_path)
    before = {k: cache.path(k).stat().st_mtime_ns for k in cache.stored_keys()}
    _, summary = _sweep(tmp_path)
    assert (summary.cached, summary.computed) == (8, 0)
    assert {k: cache.path(k).stat().st_mtime_ns for k in cache.stored_keys()} == before


def test_force_recomputes_every_key(tmp_path):
    cache, _ = _sweep(tmp_path)
    before = {k: json.loads(cache.path(k).read_text())["timing"] for k in cache.stored_keys()}
    _, summary = _sweep(tmp_path, force=True)
    assert (summary.cached, summary.computed) == (0, 8)
    after = {k: json.loads(cache.path(k).read_text())["timing"] for k in cache.stored_keys()}
    assert before.keys() == after.keys() and all(before[k] != after[k] for k in before)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
    pytest.param(lambda text: "", id="empty"),
    pytest.param(lambda text: "\x00\x00garbage", id="garbage"),
    pytest.param(lambda text: json.dumps({"key": "x"}), id="missing-fields"),
    pytest.param(lambda text: text.replace('"seed": 0', '"seed": 99'), id="other-config"),
])
def test_invalid_file_is_detected_and_recomputed(tmp_path, damage):
    cache, _ = _sweep(tmp_path)
    key = SELFTEST.configs("quick")[0].key()
    good = cache.path(key).read_text()
    cache.path(key).write_text(damage(good))
    assert not cache.has(key, SELFTEST.configs("quick")[0])
    _, summary = _sweep(tmp_path)
    assert (summary.cached, summary.computed) == (7, 1)
    assert json.loads(cache.path(key).read_text())["result"] == json.loads(good)["result"]


def test_record_under_another_key_is_invalid(tmp_path):
    cache, _ = _sweep(tmp_path)
    a, b = (c.key() for c in SELFTEST.configs("quick")[:2])
    cache.path(b).write_text(cache.path(a).read_text())  # a copy under the wrong name
    assert cache.load(b) is None and cache.load(a) is not None


def test_temp_files_are_ignored(tmp_path):
    cache, _ = _sweep(tmp_path)
    stray = cache.folder / f".{SELFTEST.configs('quick')[0].key()}.json.abc123.tmp"
    stray.write_text('{"half": ')
    assert len(cache.stored_keys()) == 8
    _, summary = _sweep(tmp_path)
    assert summary.computed == 0 and stray.exists()  # fresh: may belong to a live sweep
    os.utime(stray, (0, 0))  # an old one is a leftover of a killed writer
    assert cache.remove_stale_temp_files() == 1 and not stray.exists()


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"v": 1})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_missing_results_name_the_command(tmp_path):
    configs = SELFTEST.configs("quick")
    _sweep(tmp_path, configs=configs[:3])
    with pytest.raises(MissingResultsError, match=r"5 of 8 .*`lora-limits run _selftest --profile quick "
                                                  r"--results \S+ --set noise=0.1`"):
        load_results("_selftest", configs, tmp_path, "quick", ["noise=0.1"])
    assert len(load_results("_selftest", configs[:3], tmp_path, "quick")) == 3


def test_overrides_that_merge_grid_points_store_each_key_once(tmp_path):
    merged = [dataclasses.replace(c, effect=0.0) for c in SELFTEST.configs("quick")]  # 8 -> 4 distinct
    cache, summary = _sweep(tmp_path, configs=merged)
    assert summary.total == summary.computed == 4 and len(cache.stored_keys()) == 4


# --- claims: one computation per key across concurrent sweeps ------------------------------

def _traced(tmp_path, **fields) -> list:
    trace = tmp_path / "trace"
    trace.mkdir(exist_ok=True)
    return [dataclasses.replace(c, trace_dir=str(trace), **fields) for c in SELFTEST.configs("quick")]


def _wait_for(condition, timeout_s: float = 60.0) -> None:
    """Poll ``condition``; give up after ``timeout_s`` (the test's assertions then fail, not hang)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _computations(tmp_path) -> Counter:
    """How many times each key was computed (SelftestConfig.trace_dir markers)."""
    return Counter(p.name.split(".")[0] for p in (tmp_path / "trace").iterdir())


def test_a_claim_excludes_other_holders_until_released(tmp_path):
    a, b = ResultCache(tmp_path, SELFTEST.name), ResultCache(tmp_path, SELFTEST.name)
    assert a.claim("k1") and not b.claim("k1") and b.claim("k2")
    assert (a.folder / ".k1.lock").read_text() == f"{os.getpid()}\n"
    a.release("k1")
    assert not (a.folder / ".k1.lock").exists() and b.claim("k1")
    b.release_all()
    assert not list(a.folder.glob(".*.lock"))


def test_a_lock_left_by_a_killed_process_is_claimed(tmp_path):
    """SIGKILL runs no cleanup: the lock file stays, but the kernel dropped the lock with its holder."""
    script = ("import sys, time\nfrom analysis.cache import ResultCache\n"
              "assert ResultCache(sys.argv[1], '_selftest').claim('k')\nprint('held', flush=True)\ntime.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], text=True, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        cache = ResultCache(tmp_path, SELFTEST.name)
        assert not cache.claim("k")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert (cache.folder / ".k.lock").exists() and cache.claim("k")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_two_sweeps_at_once_compute_each_key_once_and_share_the_grid(tmp_path):
    """Two sweeps (threads, each its own ResultCache) held until each has a config in hand."""
    hold = tmp_path / "hold"
    hold.touch()
    configs = _traced(tmp_path, hold_file=str(hold))
    summaries = []
    threads = [threading.Thread(target=lambda: summaries.append(_sweep(tmp_path, configs)[1])) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: sum(_computations(tmp_path).values()) >= 2)  # each sweep holds a config
    finally:
        hold.unlink()
        for t in threads:
            t.join()
    assert _computations(tmp_path) == {c.key(): 1 for c in configs}
    assert sorted(s.computed for s in summaries)[0] >= 1 and sum(s.computed for s in summaries) == 8
    assert all(s.computed + s.elsewhere == 8 and not s.failures for s in summaries)
    assert all(ResultCache(tmp_path, SELFTEST.name).has(c.key(), c) for c in configs)


@pytest.mark.parametrize("holder_stores", [pytest.param(True, id="holder-stores"),
                                           pytest.param(False, id="holder-gives-up")])
def test_a_key_claimed_elsewhere_is_waited_for_then_counted_or_taken(tmp_path, holder_stores):
    """A config another sweep holds is skipped, then waited for: counted as done elsewhere if the
    holder stores it, computed here if the holder lets go without a record (it failed)."""
    configs = _traced(tmp_path)
    held = configs[0]
    other = ResultCache(tmp_path, SELFTEST.name)
    assert other.claim(held.key())

    def holder():
        _wait_for(lambda: len(other.stored_keys()) >= 7)  # the sweep has done everything else
        if holder_stores:
            other.store(compute_record(Task(SELFTEST.name, SELFTEST.run, held, "cpu", tmp_path)).record)
        other.release(held.key())

    thread = threading.Thread(target=holder)
    thread.start()
    _, summary = _sweep(tmp_path, configs)
    thread.join()
    assert (summary.computed, summary.elsewhere) == ((7, 1) if holder_stores else (8, 0))
    assert _computations(tmp_path) == {c.key(): 1 for c in configs}


def test_force_with_a_concurrent_sweep_recomputes_each_key_once(tmp_path):
    """--force recomputes stored keys, but not one a concurrent sweep recomputed meanwhile."""
    configs = _traced(tmp_path)
    _sweep(tmp_path, configs)
    other = ResultCache(tmp_path, SELFTEST.name)
    assert other.claim(configs[0].key())

    def holder():
        _wait_for(lambda: sum(_computations(tmp_path).values()) >= 15)  # 8 before, 7 others now
        other.store(compute_record(Task(SELFTEST.name, SELFTEST.run, configs[0], "cpu", tmp_path)).record)
        other.release(configs[0].key())

    thread = threading.Thread(target=holder)
    thread.start()
    _, summary = _sweep(tmp_path, configs, force=True)
    thread.join()
    assert (summary.computed, summary.elsewhere) == (7, 1)
    assert _computations(tmp_path) == {c.key(): 2 for c in configs}  # once before, once now
