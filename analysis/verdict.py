"""Claim verdicts from data: supported, not supported or inconclusive, decided by a CI.

A :class:`Claim` states that a measured quantity lies ``below`` (or ``above``) a
``margin``. Example: "merged accuracy on composed questions is no better than the
control" is the quantity ``merged - control`` (paired by seed) with direction ``below``
and a margin such as 0.05. Given the per-seed values, the verdict is

- supported: the whole 95% CI lies on the claimed side of the margin;
- not supported: the whole CI lies on the other side;
- inconclusive: the CI contains the margin (more seeds, or a bigger effect, would decide).

Nothing here knows what outcome the paper expects: the verdict is a function of the CI only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np

from analysis.stats import Summary, bootstrap_interval, t_interval

Direction = Literal["below", "above"]
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


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
class Verdict:
    claim: Claim
    summary: Summary
    outcome: str  # SUPPORTED, NOT_SUPPORTED or INCONCLUSIVE

    @property
    def reason(self) -> str:
        s, c = self.summary, self.claim
        interval = f"the {100 * s.confidence:g}% CI [{s.low:.3f}, {s.high:.3f}]"
        if self.outcome == INCONCLUSIVE:
            return f"{interval} contains the margin {c.margin:g}"
        side = "below" if s.high < c.margin else "above"
        # A zero-width t-interval means every seed gave the same value (e.g. one shared base
        # model, or a coarse metric): the verdict stands, but there was no spread to estimate.
        caveat = f" (all {s.n} seeds gave the same value: zero-width CI, no spread measured)" if s.std == 0 else ""
        return f"{interval} lies entirely {side} the margin {c.margin:g}{caveat}"

    def as_json(self) -> dict:
        return {"claim": self.claim.id, "outcome": self.outcome, "reason": self.reason,
                "summary": self.summary.as_json(), "direction": self.claim.direction,
                "margin": self.claim.margin, "margin_reason": self.claim.margin_reason}


def decide(claim: Claim, summary: Summary) -> Verdict:
    """The verdict on ``claim`` given the CI in ``summary`` (strict inequalities: a CI that
    touches the margin is inconclusive)."""
    below, above = summary.high < claim.margin, summary.low > claim.margin
    claimed, opposite = (below, above) if claim.direction == "below" else (above, below)
    outcome = SUPPORTED if claimed else NOT_SUPPORTED if opposite else INCONCLUSIVE
    return Verdict(claim, summary, outcome)


def judge(claim: Claim, per_seed: Iterable[float], method: str = "t",
          rng: np.random.Generator | None = None) -> Verdict:
    """Summarise the per-seed values (``"t"`` or ``"bootstrap"``, which needs ``rng``) and decide."""
    if method == "t":
        summary = t_interval(per_seed)
    elif method == "bootstrap":
        if rng is None:
            raise ValueError("bootstrap verdicts need an explicit rng (numpy Generator)")
        summary = bootstrap_interval(per_seed, rng)
    else:
        raise ValueError(f"method={method!r}; must be 't' or 'bootstrap'")
    return decide(claim, summary)
