"""Claim registry: every claim of PAPER.md section 1 as a function returning checks.

A *claim* has a stable ID (``P1``, ``T2``, ``RANK-1`` ...) and a function
``fn(settings) -> list[Check]``. A *check* is one row of the ``lora-limits theory`` table:
a prediction, a measurement, a tolerance and whether the measurement agrees. Figures are
drawn by ``analysis`` from ``Check.data``; this module never plots or prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class ClaimSettings:
    """Knobs shared by all claim functions (from ``lora-limits theory``)."""

    instances: int = 1000  # random instances for statistical claims (T2 rates)
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.instances, int) or self.instances < 10:
            raise ValueError(f"instances={self.instances!r}: must be an integer >= 10")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: must be a non-negative integer")


@dataclass(frozen=True)
class Check:
    """One verified statement. ``passed`` is computed by the claim function from
    ``measured`` and ``tolerance``; never set it by hand."""

    id: str  # e.g. "P1.exact": claim ID, a dot, the check's short name
    statement: str
    predicted: float | str
    measured: float | str
    tolerance: float | str
    passed: bool
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "statement": self.statement,
            "predicted": self.predicted,
            "measured": self.measured,
            "tolerance": self.tolerance,
            "status": self.status,
        }


def within(measured: float, predicted: float, tol: float) -> bool:
    """|measured - predicted| <= tol, NaN-safe (NaN never passes)."""
    return bool(abs(measured - predicted) <= tol)


ClaimFn = Callable[[ClaimSettings], list[Check]]
_REGISTRY: dict[str, ClaimFn] = {}


def claim(claim_id: str) -> Callable[[ClaimFn], ClaimFn]:
    """Register ``fn`` under ``claim_id`` (decorator)."""

    def register(fn: ClaimFn) -> ClaimFn:
        if claim_id in _REGISTRY:
            raise ValueError(f"claim ID {claim_id!r} registered twice")
        _REGISTRY[claim_id] = fn
        return fn

    return register


def registry() -> dict[str, ClaimFn]:
    """All claims, in registration order (import the claim modules first)."""
    from theory import all_claims  # noqa: F401  (side effect: registers every claim)

    return dict(_REGISTRY)


def run_claims(ids: list[str] | None, settings: ClaimSettings) -> list[Check]:
    """Run the named claims (all if ``ids`` is None); unknown IDs raise ValueError."""
    reg = registry()
    ids = list(reg) if not ids else ids
    unknown = [i for i in ids if i not in reg]
    if unknown:
        raise ValueError(f"unknown claim ID(s) {', '.join(unknown)}; valid: {', '.join(reg)}")
    return [check for i in ids for check in reg[i](settings)]
