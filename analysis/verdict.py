"""Claim verdicts from data, decided by a bootstrap CI over independent seeds.

A :class:`Claim` states that a measured quantity lies ``below`` (or ``above``) a
``margin``. Example: "merged accuracy on composed questions is no better than the
control" is the quantity ``merged - control`` (paired by seed) with direction ``below``
and a margin such as 0.05. Given the per-seed values, the verdict is one of

- not testable: the claim's ceiling (the model that should do the task at all, e.g. a LoRA
  trained on the composed questions themselves) stays under its threshold, on average over
  seeds, so neither outcome of the claim would say anything about reuse;
- underpowered: fewer than :data:`MIN_UNITS` independent units (seeds with their own base
  model) or a zero-width interval (every seed gave the same value: no spread was measured);
- supported: the whole 95% CI lies on the claimed side of the margin;
- not supported: the whole CI lies on the other side;
- inconclusive: the CI contains or touches the margin (more seeds, or a bigger effect, would decide).

The first matching word wins, in that order; the CI's own reading (the last three) is kept
beside an underpowered verdict. A claim is *robust* (:func:`robust`) only if it is supported
under every fine-tune recipe of the grid.

Nothing here knows what outcome the paper expects: the verdict is a function of the data only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

import numpy as np

from analysis.stats import UNBOUNDED, Summary, bootstrap_interval
from toymodels.seeds import numpy_rng

Direction = Literal["below", "above"]
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
UNDERPOWERED, NOT_TESTABLE = "underpowered", "not testable"
OUTCOMES = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, UNDERPOWERED, NOT_TESTABLE)
MIN_UNITS = 3  # independent units (seeds) a verdict needs (issue 12: fewer is "underpowered")
BOOTSTRAP_SEED = 0  # a verdict has no run seed: its bootstrap draws come from this seed's "bootstrap" streams


@dataclass(frozen=True)
class Claim:
    id: str  # stable claim ID, e.g. "REUSE-1"
    statement: str  # the claim in words, as the report prints it
    quantity: str  # what is measured per seed, e.g. "merged - control accuracy (composed questions)"
    direction: Direction  # the claim says the quantity lies below / above the margin
    margin: float
    # one sentence: why the margin is this number (what it corresponds to in the metric, or
    # that it is a convention); the report prints it. Required: a default of "" only so that
    # leaving it out is the ValueError below, not a bare TypeError.
    margin_reason: str = ""

    def __post_init__(self):
        if self.direction not in ("below", "above"):
            raise ValueError(f"claim {self.id}: direction={self.direction!r}; must be 'below' or 'above'")
        if not np.isfinite(self.margin):
            raise ValueError(f"claim {self.id}: margin={self.margin!r}; must be a finite number")
        if not isinstance(self.margin_reason, str) or not self.margin_reason.strip():
            raise ValueError(f"claim {self.id}: margin_reason={self.margin_reason!r}; give one sentence saying why "
                             f"the margin is {self.margin!r} (what it corresponds to, or that it is a convention)")


@dataclass(frozen=True)
class CeilingCheck:
    """The claim's ceiling as measured: ``name`` (which model, which metric), its per-seed
    ``values`` and the ``threshold`` its mean must reach for the claim to be testable here."""

    name: str
    values: tuple[float, ...]
    threshold: float

    def __post_init__(self):
        if not self.values or not np.all(np.isfinite(self.values)):
            raise ValueError(f"ceiling {self.name}: values={list(self.values)}; need one finite number per seed")

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def reached(self) -> bool:
        return self.mean >= self.threshold

    def __str__(self) -> str:
        return f"{self.name}: {self.mean:.3f} (threshold {self.threshold:g})"

    def as_json(self) -> dict:
        return {"name": self.name, "values": list(self.values), "threshold": self.threshold, "mean": self.mean,
                "reached": self.reached}


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    summary: Summary
    outcome: str  # one of OUTCOMES
    reading: str  # what the CI alone says: SUPPORTED, NOT_SUPPORTED or INCONCLUSIVE
    units: int  # independent units behind the CI (<= summary.n seeds)
    ceiling: CeilingCheck | None = None

    @property
    def reason(self) -> str:
        s, c = self.summary, self.claim
        if self.outcome == NOT_TESTABLE:
            return f"the ceiling {self.ceiling} does not reach its threshold: nothing here could show the claim"
        interval = f"the {100 * s.confidence:g}% CI [{s.low:.3f}, {s.high:.3f}]"
        if self.reading == INCONCLUSIVE:
            read = f"{interval} contains the margin {c.margin:g}"
        else:
            read = f"{interval} lies entirely {'below' if s.high < c.margin else 'above'} the margin {c.margin:g}"
        if self.outcome != UNDERPOWERED:
            return read
        if self.units < MIN_UNITS:
            why = f"{self.units} independent unit{'s' * (self.units != 1)} ({s.n} seeds), fewer than {MIN_UNITS}"
        else:
            why = f"all {s.n} seeds gave the same value: zero-width CI, no spread measured"
        return f"{why}; alone, {read} ({self.reading})"

    def as_json(self) -> dict:
        return {"claim": self.claim.id, "outcome": self.outcome, "reading": self.reading, "units": self.units,
                "reason": self.reason, "summary": self.summary.as_json(), "direction": self.claim.direction,
                "margin": self.claim.margin, "margin_reason": self.claim.margin_reason,
                "ceiling": None if self.ceiling is None else self.ceiling.as_json()}


def decide(claim: Claim, summary: Summary, units: int | None = None, ceiling: CeilingCheck | None = None) -> Verdict:
    """The verdict on ``claim`` given the CI in ``summary`` over ``units`` independent units
    (default: every seed is one), read against ``ceiling`` if the claim has one. Strict
    inequalities: a CI that touches the margin is inconclusive."""
    units = summary.n if units is None else units
    if not 0 < units <= summary.n:
        raise ValueError(f"units={units}: independent units must be between 1 and the {summary.n} seeds measured")
    below, above = summary.high < claim.margin, summary.low > claim.margin
    claimed, opposite = (below, above) if claim.direction == "below" else (above, below)
    reading = SUPPORTED if claimed else NOT_SUPPORTED if opposite else INCONCLUSIVE
    if ceiling is not None and not ceiling.reached:
        outcome = NOT_TESTABLE
    elif units < MIN_UNITS or summary.low == summary.high:
        outcome = UNDERPOWERED
    else:
        outcome = reading
    return Verdict(claim, summary, outcome, reading, units, ceiling)


def claim_rng(claim_id: str, *path: str) -> np.random.Generator:
    """The bootstrap draws of a claim's verdict: ``numpy_rng(BOOTSTRAP_SEED, "bootstrap", claim_id, *path)``."""
    return numpy_rng(BOOTSTRAP_SEED, "bootstrap", claim_id, *path)


def judge(claim: Claim, per_seed: Iterable[float], rng: np.random.Generator | None = None,
          bounds: tuple[float, float] = UNBOUNDED, units: int | None = None,
          ceiling: CeilingCheck | None = None) -> Verdict:
    """Bootstrap the per-seed values over seeds (within the metric's ``bounds``; draws from
    ``rng``, by default the claim's own stream :func:`claim_rng`) and decide."""
    rng = claim_rng(claim.id) if rng is None else rng
    return decide(claim, bootstrap_interval(per_seed, rng, bounds), units, ceiling)


def robust(per_recipe: Mapping[str, Verdict]) -> bool:
    """A claim holds robustly only if it is supported under every recipe of the grid."""
    if not per_recipe:
        raise ValueError("no recipes: robustness needs the verdict of at least one fine-tune recipe")
    return all(v.outcome == SUPPORTED for v in per_recipe.values())
