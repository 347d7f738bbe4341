"""analysis.verdict at its edges: a CI that touches the margin, the JSON a report stores, and
the messages of bad claims and methods. Written to kill the mutants `make mutation` found alive."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.stats import Summary, t_interval
from analysis.verdict import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Claim, decide, judge

BELOW = Claim("EDGE-1", "the gap is below the margin", "merged - control", "below", 0.05, "a test margin")
ABOVE = Claim("EDGE-2", "the gap is above the margin", "merged - control", "above", 0.05, "a test margin")


def _ci(low: float, high: float) -> Summary:
    return Summary((low + high) / 2, low, high, 5, 0.1, 0.95, "t")


@pytest.mark.parametrize("claim,low,high,outcome", [
    pytest.param(BELOW, -0.10, 0.05, INCONCLUSIVE, id="below: high touches margin"),
    pytest.param(BELOW, -0.10, 0.0499, SUPPORTED, id="below: high just under"),
    pytest.param(BELOW, 0.05, 0.20, INCONCLUSIVE, id="below: low touches margin"),
    pytest.param(BELOW, 0.0501, 0.20, NOT_SUPPORTED, id="below: low just over"),
    pytest.param(ABOVE, 0.05, 0.20, INCONCLUSIVE, id="above: low touches margin"),
    pytest.param(ABOVE, 0.0501, 0.20, SUPPORTED, id="above: low just over"),
    pytest.param(ABOVE, -0.10, 0.05, INCONCLUSIVE, id="above: high touches margin"),
    pytest.param(ABOVE, -0.10, 0.0499, NOT_SUPPORTED, id="above: high just under"),
])
def test_a_ci_touching_the_margin_is_inconclusive(claim, low, high, outcome):
    """decide(): strict inequalities on both sides, for both directions."""
    assert decide(claim, _ci(low, high)).outcome == outcome


def test_verdict_json_holds_every_field():
    values = [0.01, -0.02, 0.0, 0.015, -0.01]
    verdict = judge(BELOW, values)
    stored = json.loads(json.dumps(verdict.as_json()))
    assert stored == {"claim": "EDGE-1", "outcome": SUPPORTED, "reason": verdict.reason,
                      "summary": t_interval(values).as_json(), "direction": "below", "margin": 0.05,
                      "margin_reason": "a test margin"}
    assert stored["reason"].startswith("the 95% CI [") and "lies entirely below the margin 0.05" in stored["reason"]
    assert Summary(**stored["summary"]) == verdict.summary


def test_bad_claims_and_methods_name_the_problem():
    with pytest.raises(ValueError, match=r"^claim X: margin=nan; must be a finite number$"):
        Claim("X", "s", "q", "below", float("nan"), "r")
    for reason in ("", "   "):
        with pytest.raises(ValueError, match=r"^claim X: margin_reason='\s*'; give one sentence saying why the margin "
                                             r"is 0.05 \(what it corresponds to, or that it is a convention\)$"):
            Claim("X", "s", "q", "below", 0.05, reason)
    with pytest.raises(ValueError, match=r"^bootstrap verdicts need an explicit rng \(numpy Generator\)$"):
        judge(BELOW, [0.1, 0.2], method="bootstrap")
    with pytest.raises(ValueError, match=r"^method='anova'; must be 't' or 'bootstrap'$"):
        judge(BELOW, [0.1, 0.2], method="anova", rng=np.random.default_rng(0))
