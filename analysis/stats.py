"""Means and 95% confidence intervals over seeds.

Each seed of an experiment is one independent draw (fresh data, init and training), so a
per-seed measurement is a sample and the interval is over seeds, never over questions of one
run. Two intervals are offered: Student's t (the default; exact for normal per-seed
values, fine for the 3-20 seeds we run) and the percentile bootstrap (no normality
assumption; needs an explicit generator so that reports are reproducible). With fewer
than two seeds nothing is known about the spread and the interval is (-inf, inf).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95


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


def bootstrap_interval(values: Iterable[float], rng: np.random.Generator, confidence: float = CONFIDENCE,
                       resamples: int = 10_000) -> Summary:
    """Mean and percentile-bootstrap interval from ``resamples`` resamples drawn with ``rng``."""
    x = _values(values)
    if x.size < 2:
        return _unknown_spread(x, confidence, "bootstrap")
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)  # (resamples,)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Summary(float(x.mean()), float(low), float(high), int(x.size), float(x.std(ddof=1)),
                   confidence, "bootstrap")


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
