"""``_selftest``: a tiny dummy experiment that exercises the sweep, cache, figures and report
without the toy models. Hidden from ``lora-limits list`` and the report; the tests use it.

Each config draws ``measured = effect + noise * N(0, 1)`` from its own seed, so the
"theory prediction" is ``effect`` and paired differences across effects behave like a real
per-seed measurement. ``sleep_s`` makes a config slow (for the kill-and-resume test),
``fail_seed`` makes one seed raise (for the failure path), ``trace_dir`` makes every run
leave a marker ``<key>.<pid>.<ns>`` there as it starts (so tests count how often each config
was computed, across processes), and ``hold_file`` makes every run wait while that file
exists (so tests hold workers mid-config as long as they need, without timing guesses).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.registry import ClaimMeasure, Experiment, Result, register
from analysis.stats import paired_differences
from analysis.verdict import Claim
from toymodels.config import Config
from toymodels.progress import open_bar
from toymodels.seeds import numpy_rng


HOLD_LIMIT_S = 120.0  # a held run gives up (raises) after this, so no test can hang forever


@dataclass(frozen=True)
class SelftestConfig(Config):
    seed: int = 0
    effect: float = 0.0
    noise: float = 0.1
    sleep_s: float = 0.0
    fail_seed: int = -1  # this seed raises inside run (-1: none does)
    trace_dir: str = ""  # "": no markers
    hold_file: str = ""  # "": no waiting

    def __post_init__(self):
        if self.noise < 0:
            raise ValueError(f"noise={self.noise!r}: must be >= 0")
        if self.sleep_s < 0:
            raise ValueError(f"sleep_s={self.sleep_s!r}: must be >= 0")


def grid(profile: str) -> list[SelftestConfig]:
    seeds, effects = (range(4), (0.0, 0.5)) if profile == "quick" else (range(10), (0.0, 0.25, 0.5))
    base = SelftestConfig()
    return [dataclasses.replace(base, seed=s, effect=e) for e in effects for s in seeds]


def run(config: SelftestConfig, device: str, results: Path | str) -> dict:
    """A fake config: sleeps, then draws a noisy curve (``results`` is unused: it caches nothing)."""
    from analysis.progress import current

    if config.trace_dir:
        (Path(config.trace_dir) / f"{config.key()}.{os.getpid()}.{time.time_ns()}").touch()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while config.hold_file and Path(config.hold_file).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"selftest: {config.hold_file} still there after {HOLD_LIMIT_S} s")
        time.sleep(0.02)
    if config.seed == config.fail_seed:
        raise RuntimeError(f"selftest: seed {config.seed} fails on purpose (fail_seed)")
    bar = open_bar(current(), "sleep", 2)  # so that the tests see a config's own progress
    for _ in range(2):
        time.sleep(config.sleep_s / 2)
        bar.update()
    bar.close()
    rng = numpy_rng(config.seed, "selftest", round(config.effect * 1000))
    curve = config.effect * (1 - np.exp(-np.arange(200) / 40)) + config.noise * rng.standard_normal(200)
    return {"measured": float(curve[-20:].mean()), "prediction": config.effect,
            "curve_step": list(range(0, 200, 10)), "curve": curve[::10]}  # subsampled to 20 points


def _measured_by_seed(results: list[Result], effect: float) -> dict[int, float]:
    return {r.config.seed: r.result["measured"] for r in results if r.config.effect == effect}


def effect_gap(results: list[Result]) -> list[float]:
    """Per seed: measured at the largest effect minus measured at effect 0."""
    top = max(r.config.effect for r in results)
    return paired_differences(_measured_by_seed(results, top), _measured_by_seed(results, 0.0))


def measured_figure(results: list[Result]):
    from analysis.plotstyle import COLORS, new_figure

    fig, ax = new_figure()
    effects = sorted({r.config.effect for r in results})
    measured = [[r.result["measured"] for r in results if r.config.effect == e] for e in effects]
    for e, ys in zip(effects, measured):
        ax.scatter([e] * len(ys), ys, color=COLORS["sgd"], s=12)
    ax.plot(effects, effects, color=COLORS["theory"], label="prediction")
    ax.set_xlabel("effect")
    ax.set_ylabel("measured")
    ax.legend()
    return fig, {"effect": effects, "measured": measured}


EXPERIMENT = register(Experiment(
    name="_selftest",
    description="dummy experiment for the tests of the sweep machinery",
    grid=grid,
    run=run,
    figures={"selftest_measured": measured_figure},
    claims=(ClaimMeasure(
        Claim("SELFTEST-1", "the largest effect measures more than a quarter above no effect",
              "measured(top effect) - measured(effect 0)", "above", 0.25,
              "0.25 is half the grid's largest effect (0.5): the dummy claim holds when at least half "
              "of the planted effect is measured"),
        effect_gap, figures=("selftest_measured",)),),
    hidden=True,
))
