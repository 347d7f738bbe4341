"""Means and 95% confidence intervals over seeds.

Each seed of an experiment is one draw (fresh data, init and training), so a per-seed
measurement is a sample and the interval is over seeds, never over questions of one run.

- :func:`bootstrap_interval` is the interval every claim verdict uses: the percentile
  bootstrap of the mean over seeds (``scipy.stats.bootstrap``; no normality assumption, which
  accuracies in steps of 1/#questions do not meet), clipped to the metric's range
  (``bounds``: an accuracy lies in [0, 1], a difference of two in [-1, 1]), so an interval
  never claims values the metric cannot take (a t-interval on 2 seeds, t = 12.7, does). It needs an explicit generator, so reports are
  reproducible. Percentile, not BCa: BCa's bias and skew corrections come from a jackknife
  that 3-5 seeds cannot estimate (and that is undefined when the seeds agree).
- :func:`t_interval` / :func:`mean_curve` (Student's t) are the error bars of figures only.

With fewer than two seeds nothing is known about the spread: the interval is the whole range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
# The range of values a metric can take (a claim measure's ``bounds``):
ACCURACY = (0.0, 1.0)  # an accuracy, a share, a probability
DIFFERENCE = (-1.0, 1.0)  # a difference of two of those
UNBOUNDED = (-math.inf, math.inf)  # no fixed range (e.g. a regression coefficient)


@dataclass(frozen=True)
class Summary:
    mean: float
    low: float  # interval bounds at ``confidence``
    high: float
    n: int  # number of seeds
    std: float  # sample standard deviation (ddof=1); nan for n < 2
    confidence: float
    method: str  # "t" or "bootstrap"

    def as_json(self) -> dict[str, float | int | str]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "std": self.std,
                "confidence": self.confidence, "method": self.method}

    def __str__(self) -> str:
        pct = f"{100 * self.confidence:g}%"
        return f"{self.mean:.3f} ({pct} CI [{self.low:.3f}, {self.high:.3f}], n={self.n}, {self.method})"


def _values(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("no measurements to summarise (0 seeds)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"measurements must be finite numbers, got {x.tolist()}")
    return x


def _unknown_spread(x: np.ndarray, confidence: float, method: str) -> Summary:
    return Summary(float(x.mean()), -math.inf, math.inf, int(x.size), math.nan, confidence, method)


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value ``t_{(1+c)/2, df}``."""
    from scipy import stats  # imported here: scipy.stats costs ~1 s, and workers rarely need it

    return float(stats.t.ppf((1 + confidence) / 2, df=df))


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean and Student-t interval ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``."""
    x = _values(values)
    if x.size < 2:
        return _unknown_spread(x, confidence, "t")
    std = float(x.std(ddof=1))
    half = t_quantile(confidence, x.size - 1) * std / math.sqrt(x.size)
    mean = float(x.mean())
    return Summary(mean, mean - half, mean + half, int(x.size), std, confidence, "t")


def bootstrap_interval(values: Iterable[float], rng: np.random.Generator,
                       bounds: tuple[float, float] = UNBOUNDED, confidence: float = CONFIDENCE,
                       resamples: int = 10_000) -> Summary:
    """Mean and percentile-bootstrap interval of the mean (``resamples`` resamples of the seeds
    drawn with ``rng``), within ``bounds = (lowest, highest)``, the values the metric can take.

    Every value must lie in ``bounds``; a percentile interval lies between the smallest and
    the largest resample mean, so within the seeds' own range and hence within ``bounds``
    with no clipping needed. One seed: the interval is ``bounds`` (nothing known)."""
    from scipy import stats  # imported here: scipy.stats costs ~1 s, and workers rarely need it

    x, (lowest, highest) = _values(values), bounds
    if not lowest < highest:
        raise ValueError(f"bounds={bounds!r}: the metric's range must be (lowest, highest) with lowest < highest")
    if np.any((x < lowest) | (x > highest)):
        raise ValueError(f"measurements {x.tolist()} lie outside the metric's range {bounds!r}")
    if x.size < 2:
        return Summary(float(x[0]), lowest, highest, 1, math.nan, confidence, "bootstrap")
    ci = stats.bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
                         rng=rng, vectorized=True).confidence_interval
    return Summary(float(x.mean()), float(ci.low), float(ci.high), int(x.size), float(x.std(ddof=1)), confidence,
                   "bootstrap")


def paired_differences(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
    """``a[s] - b[s]`` for every seed ``s``, in seed order; both must cover the same seeds
    (a paired difference removes the seed-to-seed variation the two share)."""
    if set(a) != set(b):
        raise ValueError(f"paired seeds differ: only in first {sorted(set(a) - set(b))}, "
                         f"only in second {sorted(set(b) - set(a))}")
    return [a[s] - b[s] for s in sorted(a)]


def mean_curve(curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise mean and t half-width of equally long per-seed curves: ``(mean, half)``, each (T,)."""
    y = np.asarray(curves, dtype=float)  # (seeds, T)
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"curves must be a non-empty (seeds, T) array, got shape {y.shape}")
    if y.shape[0] < 2:
        return y[0], np.full(y.shape[1], np.inf)
    t = t_quantile(CONFIDENCE, y.shape[0] - 1)
    return y.mean(axis=0), t * y.std(axis=0, ddof=1) / math.sqrt(y.shape[0])
