"""Progress: the library reports through its ``progress`` argument only (and the numbers it
returns do not depend on it); the CLI's display shows a sweep's configs with an estimate
from recorded timings, and each running config's own bars, from worker processes too."""
from __future__ import annotations

import dataclasses
import io
import json

import pytest

from analysis import registry
from analysis.cache import ResultCache
from analysis.display import Display
from analysis.progress_lanes import lane_text
from analysis.progress import Reporter
from analysis.sweep import recorded_seconds, run_sweep
from toymodels.pipeline import run_two_hop
from toymodels.presets import tiny_two_hop

SELFTEST = registry.get("_selftest")


class Recorder:
    """A toymodels ``Progress`` that keeps every bar: desc, total, count, closed."""

    def __init__(self):
        self.bars = []

    def __call__(self, desc="", total=None):
        bar = _Kept(desc, total)
        self.bars.append(bar)
        return bar


@dataclasses.dataclass
class _Kept:
    desc: str
    total: int | None
    n: int = 0
    closed: bool = False
    postfix: str = ""

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, s="", refresh=True):
        self.postfix = s

    def close(self):
        self.closed = True


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k != "seconds"}
    return [_without_timings(v) for v in obj] if isinstance(obj, list) else obj


def test_pipeline_reports_every_stage_and_returns_the_same_numbers(capsys):
    cfg = dataclasses.replace(tiny_two_hop(), familiarities=("F",), methods=("average", "ties", "arrow"))
    plain = run_two_hop(cfg, seed=0, device="cpu")
    recorder = Recorder()
    watched = run_two_hop(cfg, seed=0, device="cpu", progress=recorder)
    assert json.dumps(_without_timings(plain), sort_keys=True) == json.dumps(_without_timings(watched), sort_keys=True)
    assert capsys.readouterr() == ("", "")  # the library printed nothing, with or without progress
    descs = [b.desc for b in recorder.bars]
    assert descs[:2] == ["base model: making the corpus", "base model train"]
    assert all(b.closed for b in recorder.bars)
    splits = [b for b in recorder.bars if b.desc.startswith("split ")]
    assert [b.desc for b in splits] == [f"split {f}" for f in cfg.familiarities]
    for split in splits:  # the announced total is what was done: every LoRA and every scored model
        assert split.n == split.total == len(watched["splits"][split.desc[-1]]["models"]) + \
            len(watched["splits"][split.desc[-1]]["experts"])
    loras = [b for b in recorder.bars if b.desc.startswith(("LoRA ", "joint LoRA "))]
    assert len(loras) == sum(len(s["experts"]) for s in watched["splits"].values())
    assert all(0 < b.n <= b.total == cfg.finetune.steps for b in loras)


def test_estimate_from_recorded_timings_counts_down():
    display = Display(stream=io.StringIO(), tty=False, log_every=1e9)
    display.start("exp", total=5, done=1, seconds=[10.0, 20.0], parallel=2)  # 4 left, 2 at a time, 15 s each
    assert display._left() == "est. ~30 s left"
    display.advance(seconds=50.0)  # mean now 80/3 s, 3 left on 2 workers: 3 * 80/3 / 2
    assert display._left() == "est. ~40 s left"
    display.close()
    empty = Display(stream=io.StringIO(), tty=False)
    empty.start("exp", total=3)  # nothing recorded yet: no estimate rather than a guess
    assert empty._left() == ""
    empty.close()


def test_recorded_seconds_reads_the_cache(tmp_path):
    cache = ResultCache(tmp_path, SELFTEST.name)
    configs = SELFTEST.configs("quick")
    run_sweep(SELFTEST, configs[:3], cache, progress=False)
    seconds = recorded_seconds(cache, configs)
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)


def test_lanes_show_each_config_and_its_bars():
    stream = io.StringIO()
    display = Display(stream=stream, tty=False, log_every=1e9)
    display.start("exp", total=2)
    reporter = Reporter(display.apply, lane=7)
    reporter.emit("begin", "config 1/2")
    outer = reporter(desc="split F", total=23)
    outer.update(5)
    inner = reporter(desc="LoRA AB train", total=300)
    lane = display._lanes[7]
    assert lane_text(lane) == "config 1/2 > split F 5/23 > LoRA AB train 0/300"
    inner.close()
    assert lane_text(lane) == "config 1/2 > split F 5/23"
    reporter.emit("end")
    display.advance(seconds=1.0)
    assert stream.getvalue().splitlines()[-1].startswith("[0s] exp 1/2 (est. ~1 s left)")
    display.close()


@pytest.mark.parametrize("jobs", [pytest.param(1, id="serial"), pytest.param(2, id="worker-processes")])
def test_sweep_shows_the_configs_own_progress(tmp_path, jobs):
    """The selftest's "sleep" bar reaches the display, from worker processes too."""
    stream = io.StringIO()
    configs = [dataclasses.replace(c, sleep_s=0.6) for c in SELFTEST.configs("quick")[:4]]
    with Display(stream=stream, tty=False, log_every=0.1) as display:
        summary = run_sweep(SELFTEST, configs, ResultCache(tmp_path, SELFTEST.name), jobs=jobs, display=display)
    assert summary.computed == 4
    lines = stream.getvalue().splitlines()
    assert any("config " in line and "> sleep " in line for line in lines), lines
    assert lines[-1].startswith("[") and "_selftest 4/4" in lines[-1]


def test_disabled_display_writes_nothing(tmp_path):
    stream = io.StringIO()
    with Display(enabled=False, stream=stream) as display:
        run_sweep(SELFTEST, SELFTEST.configs("quick")[:2], ResultCache(tmp_path, SELFTEST.name), display=display)
    assert stream.getvalue() == ""


def test_a_stage_prints_its_first_line_at_once_when_not_a_terminal():
    """Logs and pipes get a status line the moment a stage starts, not after the first
    logging interval (a worker pool can take seconds to start on a loaded machine)."""
    stream = io.StringIO()
    display = Display(stream=stream, tty=False, log_every=3600)
    display.start("stage", 3)
    try:
        assert stream.getvalue().splitlines()[-1].endswith("stage 0/3")
    finally:
        display.close()
