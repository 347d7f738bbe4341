"""The result cache: atomic records, invalid files recomputed, temp files ignored, --force."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from analysis import registry
from analysis.atomic import atomic_write_json
from analysis.cache import MissingResultsError, ResultCache, load_results
from analysis.sweep import run_sweep

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
    assert record["result"] == json.loads(json.dumps(SELFTEST.run(config, "cpu"), default=lambda a: a.tolist()))
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
