"""analysis.stats against independent oracles: scipy's t interval, a hand-written bootstrap
with the same generator, the statistics module, and the edge cases (1 and 2 seeds, float32
input, malformed curves). Written to kill the mutants `make mutation` found alive."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.stats import Summary, bootstrap_interval, mean_curve, paired_differences, t_interval

VALUES = [0.42, 0.17, 0.88, 0.31, 0.65, 0.05, 0.73, 0.29, 0.51, 0.94, 0.12, 0.36]  # 12 "seeds"


def _linear_quantile(sorted_values: list[float], q: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's default method)."""
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    if lo + 1 == len(sorted_values):
        return sorted_values[lo]
    return sorted_values[lo] + (h - lo) * (sorted_values[lo + 1] - sorted_values[lo])


def _hand_bootstrap(values: list[float], seed: int, confidence: float, resamples: int = 10_000):
    """The percentile bootstrap written out: one resample (n indices drawn uniformly from all n
    seeds) at a time, from the same generator stream."""
    rng, n = np.random.default_rng(seed), len(values)
    means = sorted(sum(values[i] for i in rng.integers(0, n, size=n)) / n for _ in range(resamples))
    return _linear_quantile(means, (1 - confidence) / 2), _linear_quantile(means, (1 + confidence) / 2)


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_t_interval_equals_scipy_t_interval(confidence):
    s = t_interval(VALUES, confidence=confidence)
    sem = statistics.stdev(VALUES) / math.sqrt(len(VALUES))
    low, high = scipy_stats.t.interval(confidence, len(VALUES) - 1, loc=statistics.mean(VALUES), scale=sem)
    assert (s.low, s.high) == pytest.approx((low, high), rel=1e-12)
    assert s.mean == pytest.approx(statistics.mean(VALUES), rel=1e-12)
    assert s.std == pytest.approx(statistics.stdev(VALUES), rel=1e-12)
    assert (s.n, s.confidence, s.method) == (12, confidence, "t")


@pytest.mark.parametrize("confidence", [0.95, 0.5])
def test_bootstrap_equals_the_hand_computed_percentile_bootstrap(confidence):
    """Same generator seed, default 10_000 resamples: the interval is the (1-c)/2 and (1+c)/2
    quantiles of the resample means, and the other fields describe the sample itself."""
    s = bootstrap_interval(VALUES, np.random.default_rng(11), confidence=confidence)
    assert (s.low, s.high) == pytest.approx(_hand_bootstrap(VALUES, 11, confidence), rel=1e-12)
    assert s.mean == pytest.approx(statistics.mean(VALUES), rel=1e-12)
    assert s.std == pytest.approx(statistics.stdev(VALUES), rel=1e-12)
    assert (s.n, s.confidence, s.method) == (12, confidence, "bootstrap")


def test_bootstrap_resamples_every_seed():
    """A single outlier seed must be drawable: with [1, 0, 0] the resample mean is >= 1/3
    whenever seed 0 is drawn (probability 1 - (2/3)^3 = 0.70), so the upper bound is >= 1/3."""
    s = bootstrap_interval([1.0, 0.0, 0.0], np.random.default_rng(0), resamples=2_000)
    assert s.high >= 1 / 3 and s.low == 0.0


def test_two_seeds_give_a_finite_interval():
    t = t_interval([0.2, 0.4])  # t_{0.975, 1} = 12.7062
    assert t.high - t.mean == pytest.approx(12.706205 * statistics.stdev([0.2, 0.4]) / math.sqrt(2), rel=1e-6)
    b = bootstrap_interval([0.2, 0.4], np.random.default_rng(0))
    assert (b.low, b.high) == (pytest.approx(0.2), pytest.approx(0.4))


@pytest.mark.parametrize("summarise,method", [
    pytest.param(lambda v, c: t_interval(v, confidence=c), "t", id="t"),
    pytest.param(lambda v, c: bootstrap_interval(v, np.random.default_rng(0), confidence=c), "bootstrap",
                 id="bootstrap"),
])
def test_one_seed_has_unknown_spread_but_keeps_mean_confidence_and_method(summarise, method):
    s = summarise([0.3], 0.9)
    assert (s.mean, s.low, s.high, s.n, s.confidence, s.method) == (0.3, -math.inf, math.inf, 1, 0.9, method)
    assert math.isnan(s.std)


def test_float32_measurements_are_summarised_in_float64():
    """Per-seed accuracies often arrive as float32 (torch); the mean must not lose them:
    2^24 + 1 is not a float32, so a float32 mean of [2^24, 1, -2^24] is 0, not 1/3."""
    x = np.array([2.0**24, 1.0, -(2.0**24)], dtype=np.float32)
    assert t_interval(x).mean == pytest.approx(1 / 3, rel=1e-12)
    mean, _ = mean_curve(np.stack([x, x]).T.copy())  # (3 seeds, T=2)
    np.testing.assert_allclose(mean, [1 / 3, 1 / 3], rtol=1e-12)
    single, _ = mean_curve([[1, 2]])
    assert single.dtype == np.float64


def test_no_measurements_message():
    with pytest.raises(ValueError, match=r"^no measurements to summarise \(0 seeds\)$"):
        t_interval([])


def test_summary_json_round_trips_every_field_and_prints_its_interval():
    s = t_interval([1.0, 2.0, 3.0])  # mean 2, half-width 4.302653 / sqrt(3) = 2.484
    as_json = json.loads(json.dumps(s.as_json()))
    assert as_json == {"mean": 2.0, "low": s.low, "high": s.high, "n": 3, "std": 1.0,
                       "confidence": 0.95, "method": "t"}
    assert Summary(**as_json) == s
    assert str(s) == "2.000 (95% CI [-0.484, 4.484], n=3, t)"
    assert str(t_interval([1.0, 2.0, 3.0], confidence=0.9)).startswith("2.000 (90% CI [")


def test_paired_differences_are_first_minus_second_in_seed_order():
    assert paired_differences({2: 0.9, 0: 0.5, 1: 0.7}, {1: 0.2, 2: 0.4, 0: 0.1}) == \
        [pytest.approx(0.4), pytest.approx(0.5), pytest.approx(0.5)]


def test_mean_curve_seed_counts():
    """1 seed: the curve itself and an infinite half-width; 2 seeds: t with 1 df; T = 1 works."""
    mean, half = mean_curve([[0.1, 0.5, 0.7]])
    np.testing.assert_array_equal(mean, [0.1, 0.5, 0.7])
    np.testing.assert_array_equal(half, [np.inf, np.inf, np.inf])
    mean, half = mean_curve([[0.2, 1.0], [0.4, 1.0]])
    np.testing.assert_allclose(mean, [0.3, 1.0])
    np.testing.assert_allclose(half, [12.706205 * statistics.stdev([0.2, 0.4]) / math.sqrt(2), 0.0], rtol=1e-6)
    mean, half = mean_curve([[0.1], [0.2], [0.6]])  # 3 seeds, one step
    column = t_interval([0.1, 0.2, 0.6])
    np.testing.assert_allclose(mean, [column.mean])
    np.testing.assert_allclose(half, [column.high - column.mean])


@pytest.mark.parametrize("curves,shape", [
    pytest.param([0.1, 0.2], r"\(2,\)", id="1-D"),
    pytest.param(np.empty((0, 3)), r"\(0, 3\)", id="no seeds"),
])
def test_mean_curve_rejects_malformed_curves(curves, shape):
    with pytest.raises(ValueError, match=rf"^curves must be a non-empty \(seeds, T\) array, got shape {shape}$"):
        mean_curve(curves)
