"""Verdicts come from the data: the same claim flips between supported, inconclusive,
not supported and underpowered as synthetic per-seed results move; the figures' t-intervals
match independent oracles."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from analysis import registry
from analysis.cache import MissingResultsError, ResultCache
from analysis.registry import ClaimMeasure
from analysis.report import build_report, draw_figures
from analysis.stats import bootstrap_interval, mean_curve, paired_differences, t_interval
from analysis.sweep import run_sweep
from analysis.verdict import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, UNDERPOWERED, Claim, judge

# "merged accuracy on composed questions is no better than the control", per seed:
NO_BETTER = Claim("REUSE-TEST", "merged is no better than the control on composed questions",
                  "merged - control accuracy", "below", 0.05, "a test margin")


def _per_seed(mean: float, spread: float, n: int = 6) -> list[float]:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(n)
    return list(mean + spread * (noise - noise.mean()) / noise.std(ddof=1))  # exact mean and sd


@pytest.mark.parametrize("mean,spread,outcome", [
    pytest.param(0.00, 0.02, SUPPORTED, id="diff~0 -> supported"),
    pytest.param(0.30, 0.02, NOT_SUPPORTED, id="merged+0.30 -> not supported"),
    pytest.param(0.05, 0.02, INCONCLUSIVE, id="at the margin -> inconclusive"),
    pytest.param(0.00, 0.50, INCONCLUSIVE, id="noisy -> inconclusive"),
])
def test_verdict_flips_with_the_data(mean, spread, outcome):
    assert judge(NO_BETTER, _per_seed(mean, spread), np.random.default_rng(0)).outcome == outcome


@pytest.mark.parametrize("mean,outcome", [pytest.param(0.3, SUPPORTED, id="above"),
                                          pytest.param(-0.3, NOT_SUPPORTED, id="below")])
def test_direction_above_mirrors_below(mean, outcome):
    claim = dataclasses.replace(NO_BETTER, direction="above")
    assert judge(claim, _per_seed(mean, 0.02), np.random.default_rng(1)).outcome == outcome


def test_t_interval_matches_textbook_values():
    s = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975, 2} = 4.302653
    assert s.mean == pytest.approx(2.0) and s.std == pytest.approx(1.0)
    assert s.high - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert s.low == pytest.approx(2.0 - 4.302653 / math.sqrt(3), rel=1e-6)


def test_mean_curve_is_the_pointwise_t_interval():
    curves = np.random.default_rng(3).standard_normal((5, 7))  # (seeds, T)
    mean, half = mean_curve(curves)
    for t in range(7):
        column = t_interval(curves[:, t])
        assert mean[t] == pytest.approx(column.mean) and half[t] == pytest.approx(column.high - column.mean)


def test_bootstrap_is_reproducible_and_close_to_t():
    values = _per_seed(0.1, 0.05, n=20)
    a, b = (bootstrap_interval(values, np.random.default_rng(7)) for _ in range(2))
    t = t_interval(values)
    assert a == b
    assert a.low == pytest.approx(t.low, abs=0.01) and a.high == pytest.approx(t.high, abs=0.01)


def test_one_or_two_seeds_are_underpowered_however_clear():
    for values in ([0.9], [0.9, 0.8]):
        verdict = judge(NO_BETTER, values, np.random.default_rng(0))
        assert verdict.outcome == UNDERPOWERED and verdict.units == len(values)
    assert judge(NO_BETTER, [0.9, 0.8, 0.85], np.random.default_rng(0)).outcome == NOT_SUPPORTED


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="0 seeds"):
        t_interval([])
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="only in first \\[2\\]"):
        paired_differences({1: 0.5, 2: 0.1}, {1: 0.4})
    with pytest.raises(ValueError, match="direction='sideways'"):
        Claim("X", "s", "q", "sideways", 0.0, "r")


# --- the report: claims judged from cached results -----------------------------------------

SELFTEST = registry.get("_selftest")
THEORY = [{"id": "P1.exact", "statement": "rank-one edit", "predicted": 0.0, "measured": 1e-12,
           "tolerance": 1e-9, "status": "PASS"}]


@pytest.fixture
def filled(tmp_path):
    results, figures = tmp_path / "results", tmp_path / "figures"
    run_sweep(SELFTEST, SELFTEST.configs("quick"), ResultCache(results, SELFTEST.name), progress=False)
    from analysis.cache import load_results
    draw_figures(SELFTEST, load_results(SELFTEST.name, SELFTEST.configs("quick"), results, "quick"),
                 figures, "quick")
    return results, figures


def _with_margin(margin: float):
    measure = SELFTEST.claims[0]
    claim = dataclasses.replace(measure.claim, margin=margin)
    return {"_selftest": dataclasses.replace(SELFTEST, claims=(ClaimMeasure(claim, measure.per_seed,
                                                                             measure.figures),))}


def test_report_sections_and_verdicts_follow_the_cache(filled):
    results, figures = filled
    low = build_report(_with_margin(0.25), "quick", results, figures, figures, THEORY)
    high = build_report(_with_margin(0.75), "quick", results, figures, figures, THEORY)
    assert "## SELFTEST-1: " in low and "| P1.exact | rank-one edit |" in low
    assert "Verdict: **supported**" in low and "Verdict: **not supported**" in high
    assert "[selftest_measured](selftest_measured.png)" in low


def test_report_with_missing_data_names_the_command(filled, tmp_path):
    results, figures = filled
    with pytest.raises(MissingResultsError, match=r"run `lora-limits run _selftest --profile quick --results \S+`"):
        build_report(_with_margin(0.25), "quick", tmp_path / "empty", figures, figures, THEORY)
    (figures / "selftest_measured.png").unlink()
    with pytest.raises(MissingResultsError, match=r"selftest_measured.png is missing: run `lora-limits run "
                                                  r"_selftest --profile quick --results \S+ --figures \S+`"):
        build_report(_with_margin(0.25), "quick", results, figures, figures, THEORY)
    with pytest.raises(MissingResultsError, match="lora-limits reproduce"):
        build_report(_with_margin(0.25), "quick", results, figures, figures, None)


def test_zero_width_interval_is_underpowered_not_certain():
    """Identical per-seed values give a zero-width CI: no spread was measured, so the verdict
    is underpowered (issue 12: REUSE-0, MECH-2, RD-2, RD-4 read decisive on one shared base)."""
    claim = Claim("Z-1", "s", "q", "below", 0.5, "r")
    same = judge(claim, [0.375, 0.375, 0.375, 0.375], np.random.default_rng(0))
    assert (same.outcome, same.reading) == (UNDERPOWERED, SUPPORTED)
    assert "zero-width CI" in same.reason and "all 4 seeds" in same.reason
    spread = judge(claim, [0.30, 0.32, 0.31], np.random.default_rng(0))
    assert spread.outcome == SUPPORTED and "zero-width" not in spread.reason
