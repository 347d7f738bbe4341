"""analysis.stats against independent oracles: scipy's t interval, the exact bootstrap
distribution of a 0/1 sample (a binomial), the statistics module, and the edge cases (1 and
2 seeds, metric bounds, float32 input, malformed curves). Written to kill the mutants
`make mutation` found alive."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.stats import (ACCURACY, DIFFERENCE, UNBOUNDED, Summary, bootstrap_interval, mean_curve,
                            paired_differences, t_interval)

VALUES = [0.42, 0.17, 0.88, 0.31, 0.65, 0.05, 0.73, 0.29, 0.51, 0.94, 0.12, 0.36]  # 12 "seeds"


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_t_interval_equals_scipy_t_interval(confidence):
    s = t_interval(VALUES, confidence=confidence)
    sem = statistics.stdev(VALUES) / math.sqrt(len(VALUES))
    low, high = scipy_stats.t.interval(confidence, len(VALUES) - 1, loc=statistics.mean(VALUES), scale=sem)
    assert (s.low, s.high) == pytest.approx((low, high), rel=1e-12)
    assert s.mean == pytest.approx(statistics.mean(VALUES), rel=1e-12)
    assert s.std == pytest.approx(statistics.stdev(VALUES), rel=1e-12)
    assert (s.n, s.confidence, s.method) == (12, confidence, "t")


@pytest.mark.parametrize("n,ones,confidence", [(5, 1, 0.95), (4, 2, 0.95), (9, 4, 0.95), (7, 3, 0.8)])
def test_bootstrap_equals_the_exact_bootstrap_of_a_zero_one_sample(n, ones, confidence):
    """With ``ones`` seeds at 1 and the rest at 0, a resample's mean is Binomial(n, ones/n) / n,
    so the percentile interval is the binomial's (1-c)/2 and (1+c)/2 quantiles over n. The
    cases are chosen with every binomial CDF value at least 0.01 from those levels, so 10,000
    resamples land on the exact quantile (the check below makes sure of it)."""
    p, levels = ones / n, ((1 - confidence) / 2, (1 + confidence) / 2)
    cdf = scipy_stats.binom.cdf(np.arange(n + 1), n, p)
    assert all(abs(c - q) > 0.01 for c in cdf for q in levels)
    values = [1.0] * ones + [0.0] * (n - ones)
    s = bootstrap_interval(values, np.random.default_rng(11), ACCURACY, confidence=confidence)
    exact = [scipy_stats.binom.ppf(q, n, p) / n for q in levels]
    assert (s.low, s.high) == pytest.approx(exact, abs=1e-12)
    assert s.mean == pytest.approx(p, rel=1e-12) and s.std == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert (s.n, s.confidence, s.method) == (n, confidence, "bootstrap")


def test_three_distinct_seeds_give_their_own_range():
    """n = 3: a resample is all one seed with probability 1/27 = 0.037 > 0.025, so the 95%
    percentile interval is exactly [smallest, largest] seed."""
    s = bootstrap_interval([0.9, 0.2, 0.5], np.random.default_rng(3), ACCURACY)
    assert (s.low, s.high) == (pytest.approx(0.2), pytest.approx(0.9))


def test_bootstrap_is_scipys_percentile_bootstrap_with_10000_resamples(monkeypatch):
    """The documented settings reach scipy: percentile method, 10,000 resamples of the seeds'
    mean, the confidence, the caller's generator, one vectorised call."""
    calls = []
    real = scipy_stats.bootstrap

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy_stats, "bootstrap", spy)
    rng = np.random.default_rng(0)
    bootstrap_interval(VALUES, rng)
    (data,), kwargs = calls[0][0][0], calls[0][1]
    np.testing.assert_array_equal(data, VALUES)
    assert calls[0][0][1] is np.mean
    assert kwargs == {"n_resamples": 10_000, "confidence_level": 0.95, "method": "percentile", "rng": rng,
                      "vectorized": True}


def test_bootstrap_is_reproducible_from_its_generator():
    a, b = (bootstrap_interval(VALUES, np.random.default_rng(5), ACCURACY) for _ in range(2))
    c = bootstrap_interval(VALUES, np.random.default_rng(6), ACCURACY)
    assert a == b and (a.low, a.high) != (c.low, c.high)


def test_bootstrap_interval_stays_in_the_metric_range_where_t_does_not():
    """Accuracies near 1 on 3 seeds: the t-interval runs past 1 (issue 12), the bootstrap cannot."""
    values = [1.0, 1.0, 0.875]
    assert t_interval(values).high > 1.0
    s = bootstrap_interval(values, np.random.default_rng(0), ACCURACY)
    assert (s.low, s.high) == (pytest.approx(0.875), 1.0)


@pytest.mark.parametrize("bounds,low,high", [(ACCURACY, 0.0, 1.0), (DIFFERENCE, -1.0, 1.0),
                                             (UNBOUNDED, -math.inf, math.inf)])
def test_one_seed_bootstrap_interval_is_the_whole_metric_range(bounds, low, high):
    s = bootstrap_interval([0.25], np.random.default_rng(0), bounds, confidence=0.9)
    assert (s.mean, s.low, s.high, s.n, s.confidence, s.method) == (0.25, low, high, 1, 0.9, "bootstrap")
    assert math.isnan(s.std)


def test_bootstrap_default_range_is_unbounded_and_values_must_lie_in_the_range():
    assert bootstrap_interval([7.0], np.random.default_rng(0)).high == math.inf
    for values in ([0.5, 1.5], [-0.25, 0.5]):
        with pytest.raises(ValueError, match=rf"^measurements \[{values[0]}, {values[1]}\] lie outside the "
                                             r"metric's range \(0.0, 1.0\)$"):
            bootstrap_interval(values, np.random.default_rng(0), ACCURACY)
    assert bootstrap_interval([0.0, 1.0], np.random.default_rng(0), ACCURACY).n == 2  # the ends are inside
    for bounds in ((1.0, 1.0), (1.0, 0.0)):
        with pytest.raises(ValueError, match=rf"^bounds=\({bounds[0]}, {bounds[1]}\): the metric's range must be "
                                             r"\(lowest, highest\) with lowest < highest$"):
            bootstrap_interval([1.0], np.random.default_rng(0), bounds)


def test_two_seeds_give_a_finite_interval():
    t = t_interval([0.2, 0.4])  # t_{0.975, 1} = 12.7062
    assert t.high - t.mean == pytest.approx(12.706205 * statistics.stdev([0.2, 0.4]) / math.sqrt(2), rel=1e-6)
    b = bootstrap_interval([0.2, 0.4], np.random.default_rng(0))
    assert (b.low, b.high) == (pytest.approx(0.2), pytest.approx(0.4))


def test_one_seed_t_interval_has_unknown_spread_but_keeps_mean_confidence_and_method():
    s = t_interval([0.3], confidence=0.9)
    assert (s.mean, s.low, s.high, s.n, s.confidence, s.method) == (0.3, -math.inf, math.inf, 1, 0.9, "t")
    assert math.isnan(s.std)


def test_float32_measurements_are_summarised_in_float64():
    """Per-seed accuracies often arrive as float32 (torch); the mean must not lose them:
    2^24 + 1 is not a float32, so a float32 mean of [2^24, 1, -2^24] is 0, not 1/3."""
    x = np.array([2.0**24, 1.0, -(2.0**24)], dtype=np.float32)
    assert t_interval(x).mean == pytest.approx(1 / 3, rel=1e-12)
    assert bootstrap_interval(x, np.random.default_rng(0)).mean == pytest.approx(1 / 3, rel=1e-12)
    mean, _ = mean_curve(np.stack([x, x]).T.copy())  # (3 seeds, T=2)
    np.testing.assert_allclose(mean, [1 / 3, 1 / 3], rtol=1e-12)
    single, _ = mean_curve([[1, 2]])
    assert single.dtype == np.float64


def test_no_measurements_message():
    with pytest.raises(ValueError, match=r"^no measurements to summarise \(0 seeds\)$"):
        t_interval([])
    with pytest.raises(ValueError, match=r"^no measurements to summarise \(0 seeds\)$"):
        bootstrap_interval([], np.random.default_rng(0))


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
