"""Sweep engines: worker processes and a Dask local cluster store exactly what serial stores."""
from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from analysis import registry, sweep_engines
from analysis.cache import ResultCache
from analysis.sweep import run_sweep
from analysis.sweep_engines import choose_engine

SELFTEST = registry.get("_selftest")


def _stored_results(cache: ResultCache) -> dict[str, dict]:
    records = {k: json.loads(cache.path(k).read_text()) for k in cache.stored_keys()}
    return {k: {"config": r["config"], "result": r["result"]} for k, r in records.items()}


def _sweep(root, engine, jobs, configs=None):
    cache = ResultCache(root, SELFTEST.name)
    summary = run_sweep(SELFTEST, configs or SELFTEST.configs("quick"), cache, jobs=jobs, engine=engine,
                        progress=False)
    return cache, summary


@pytest.fixture(scope="module")
def serial_results(tmp_path_factory):
    cache, summary = _sweep(tmp_path_factory.mktemp("serial"), "serial", 1)
    assert summary.computed == 8
    return _stored_results(cache)


def test_two_worker_processes_equal_serial(tmp_path, serial_results):
    cache, summary = _sweep(tmp_path, "process", 2)
    assert (summary.engine, summary.computed, summary.failures) == ("process", 8, [])
    assert _stored_results(cache) == serial_results
    pids = {json.loads(cache.path(k).read_text())["timing"]["pid"] for k in cache.stored_keys()}
    assert len(pids) >= 1 and all(isinstance(p, int) for p in pids)


def test_dask_local_cluster_equals_serial(tmp_path, serial_results):
    pytest.importorskip("distributed", reason="Dask is in the dev extra: pip install -e '.[dev]'")
    cache, summary = _sweep(tmp_path, "dask", 2)
    assert (summary.engine, summary.computed, summary.failures) == ("dask", 8, [])
    assert _stored_results(cache) == serial_results


@pytest.mark.parametrize("engine,jobs", [pytest.param("serial", 1, id="serial"),
                                         pytest.param("process", 2, id="process-2")])
def test_a_failing_config_is_reported_and_the_rest_cached(tmp_path, engine, jobs):
    configs = [dataclasses.replace(c, fail_seed=1) for c in SELFTEST.configs("quick")]
    cache, summary = _sweep(tmp_path, engine, jobs, configs)
    failed = {c.key() for c in configs if c.seed == 1}
    assert {f.key for f in summary.failures} == failed
    assert all("fails on purpose" in f.error for f in summary.failures)
    assert set(cache.stored_keys()) == {c.key() for c in configs} - failed
    _, again = _sweep(tmp_path, engine, jobs, configs)  # a rerun retries only the failures
    assert (again.cached, again.computed, len(again.failures)) == (6, 0, 2)


@pytest.mark.parametrize("engine,jobs,scheduler,chosen", [
    pytest.param(None, 1, None, "serial", id="default-1"),
    pytest.param(None, 3, None, "process", id="default-3"),
    pytest.param(None, 1, "tcp://h:8786", "dask", id="scheduler"),
    pytest.param("dask", 2, None, "dask", id="explicit"),
])
def test_engine_choice(engine, jobs, scheduler, chosen):
    assert choose_engine(engine, jobs, scheduler) == chosen


def test_engine_errors():
    with pytest.raises(ValueError, match="must be one of serial, process, dask"):
        choose_engine("ray", 2, None)
    with pytest.raises(ValueError, match="scheduler address needs the dask engine"):
        choose_engine("process", 2, "tcp://h:8786")


def test_a_finished_grid_starts_no_cluster(tmp_path, monkeypatch):
    _sweep(tmp_path, "serial", 1)
    monkeypatch.setitem(sweep_engines.RUNNERS, "dask", None)  # calling it would raise TypeError
    _, summary = _sweep(tmp_path, "dask", 2)
    assert (summary.cached, summary.computed) == (8, 0)


def test_the_process_engine_claims_only_the_configs_in_flight(tmp_path):
    """--jobs 2 holds two claims at a time (not the whole grid), so a concurrent sweep on the
    same cache can take the rest."""
    trace, hold = tmp_path / "trace", tmp_path / "hold"
    trace.mkdir()
    hold.touch()
    configs = [dataclasses.replace(c, trace_dir=str(trace), hold_file=str(hold)) for c in SELFTEST.configs("quick")]
    cache = ResultCache(tmp_path / "results", SELFTEST.name)
    sweep_thread = threading.Thread(target=run_sweep, args=(SELFTEST, configs, cache),
                                    kwargs={"jobs": 2, "engine": "process", "progress": False})
    sweep_thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(list(trace.iterdir())) < 2 and time.monotonic() < deadline:  # both workers hold one
            time.sleep(0.02)
        assert len(list(cache.folder.glob(".*.lock"))) == 2
    finally:
        hold.unlink()
        sweep_thread.join()
    assert len(cache.stored_keys()) == 8 and not list(cache.folder.glob(".*.lock"))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_each_worker_gets_its_share_of_the_cores_even_with_torch_already_imported():
    """The process engine's workers run torch on cores // jobs threads; the OMP variable alone
    comes too late once unpickling a task has imported torch (2 x 2 threads on 2 cores
    oversubscribed the machine)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    import torch  # noqa: F401  (the parent has torch loaded, as a sweep does)

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=sweep_engines._init_worker, initargs=(1, os.getpid())) as pool:
        assert pool.submit(_torch_threads).result(timeout=120) == 1
