"""analysis.verdict at its edges: a CI that touches the margin, the order of the five verdict
words (not testable > underpowered > the CI's reading), the JSON a report stores, robustness
over recipes, and the messages of bad claims. Written to kill the mutants `make mutation`
found alive."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.stats import ACCURACY, Summary, bootstrap_interval
from analysis.verdict import (BOOTSTRAP_SEED, INCONCLUSIVE, MIN_UNITS, NOT_SUPPORTED, NOT_TESTABLE, OUTCOMES,
                              SUPPORTED, UNDERPOWERED, CeilingCheck, Claim, claim_rng, decide, judge, robust)
from toymodels.seeds import numpy_rng

BELOW = Claim("EDGE-1", "the gap is below the margin", "merged - control", "below", 0.05, "a test margin")
ABOVE = Claim("EDGE-2", "the gap is above the margin", "merged - control", "above", 0.05, "a test margin")
# irregular per-seed values: two generators' bootstrap intervals of them differ (no ties by luck)
SPREAD = [0.0113, -0.0271, 0.0042, 0.0187, -0.0129, 0.0305, -0.0068, 0.0221, -0.0193, 0.0011, 0.0097, -0.0034]
REACHED = CeilingCheck("joint/hops composed", (0.9, 1.0, 0.8), 0.5)
MISSED = CeilingCheck("joint/hops composed", (0.1, 0.0, 0.2), 0.5)


def _ci(low: float, high: float, n: int = 5) -> Summary:
    return Summary((low + high) / 2, low, high, n, 0.1, 0.95, "bootstrap")


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
    verdict = decide(claim, _ci(low, high))
    assert (verdict.outcome, verdict.reading, verdict.units, verdict.ceiling) == (outcome, outcome, 5, None)


@pytest.mark.parametrize("units,outcome", [(1, UNDERPOWERED), (MIN_UNITS - 1, UNDERPOWERED), (MIN_UNITS, SUPPORTED),
                                           (5, SUPPORTED)])
def test_fewer_than_three_independent_units_is_underpowered(units, outcome):
    verdict = decide(BELOW, _ci(-0.2, -0.1), units=units)
    assert MIN_UNITS == 3 and (verdict.outcome, verdict.reading, verdict.units) == (outcome, SUPPORTED, units)


@pytest.mark.parametrize("n,outcome", [(2, UNDERPOWERED), (3, NOT_SUPPORTED)])
def test_units_default_to_the_seeds(n, outcome):
    assert decide(BELOW, _ci(0.2, 0.3, n=n)).outcome == outcome


def test_a_zero_width_interval_is_underpowered_whatever_its_side():
    for claim, reading in ((BELOW, SUPPORTED), (ABOVE, NOT_SUPPORTED)):
        verdict = decide(claim, _ci(0.0, 0.0, n=8))
        assert (verdict.outcome, verdict.reading) == (UNDERPOWERED, reading)
    assert decide(BELOW, _ci(0.0, 1e-9, n=8)).outcome == SUPPORTED  # a sliver of width is a real interval


def test_a_missed_ceiling_makes_the_claim_not_testable_before_anything_else():
    for summary, units in ((_ci(-0.2, -0.1), 5), (_ci(-0.2, -0.1), 1), (_ci(0.0, 0.0), 5), (_ci(0.2, 0.3), 5)):
        assert decide(BELOW, summary, units, MISSED).outcome == NOT_TESTABLE
    assert decide(BELOW, _ci(-0.2, -0.1), 5, REACHED).outcome == SUPPORTED
    assert decide(BELOW, _ci(0.2, 0.3), 5, REACHED).outcome == NOT_SUPPORTED
    assert decide(BELOW, _ci(-0.2, -0.1), 2, REACHED).outcome == UNDERPOWERED


def test_a_ceiling_is_reached_at_its_threshold_by_the_mean_over_seeds():
    assert CeilingCheck("c", (0.4, 0.6), 0.5).reached  # mean exactly at the threshold
    assert not CeilingCheck("c", (0.4, 0.59), 0.5).reached
    assert CeilingCheck("c", (0.0, 1.0, 1.0), 0.6).reached  # the mean, not every seed
    ceiling = CeilingCheck("joint/hops", (0.25, 0.5), 0.5)
    assert ceiling.mean == pytest.approx(0.375)
    assert str(ceiling) == "joint/hops: 0.375 (threshold 0.5)"
    assert json.loads(json.dumps(ceiling.as_json())) == {"name": "joint/hops", "values": [0.25, 0.5],
                                                         "threshold": 0.5, "mean": 0.375, "reached": False}


def test_a_ceiling_needs_finite_values():
    for values, shown in (((), r"\[\]"), ((0.5, float("nan")), r"\[0.5, nan\]"), ((float("inf"),), r"\[inf\]")):
        with pytest.raises(ValueError, match=rf"^ceiling joint: values={shown}; need one finite number per seed$"):
            CeilingCheck("joint", values, 0.5)
    assert CeilingCheck("joint", (0.0,), 0.5).values == (0.0,)  # one seed at 0 is a legal (missed) ceiling
    assert CeilingCheck("joint", (0.25, 1.0), 0.5).mean == 0.625


def test_units_must_be_between_one_and_the_seeds():
    for units in (0, 6):
        with pytest.raises(ValueError, match=rf"^units={units}: independent units must be between 1 and the 5 seeds "
                                             r"measured$"):
            decide(BELOW, _ci(-0.2, -0.1), units=units)


def test_reasons_say_why_in_words():
    assert decide(BELOW, _ci(-0.2, -0.1)).reason == "the 95% CI [-0.200, -0.100] lies entirely below the margin 0.05"
    assert decide(BELOW, _ci(0.1, 0.2)).reason == "the 95% CI [0.100, 0.200] lies entirely above the margin 0.05"
    assert decide(BELOW, _ci(0.0, 0.2)).reason == "the 95% CI [0.000, 0.200] contains the margin 0.05"
    assert decide(BELOW, _ci(-0.2, -0.1), units=1).reason == (
        "1 independent unit (5 seeds), fewer than 3; alone, the 95% CI [-0.200, -0.100] lies entirely below "
        "the margin 0.05 (supported)")
    assert decide(ABOVE, _ci(0.0, 0.2), units=2).reason == (
        "2 independent units (5 seeds), fewer than 3; alone, the 95% CI [0.000, 0.200] contains the margin 0.05 "
        "(inconclusive)")
    assert decide(BELOW, _ci(0.3, 0.3, n=4)).reason == (
        "all 4 seeds gave the same value: zero-width CI, no spread measured; alone, the 95% CI [0.300, 0.300] "
        "lies entirely above the margin 0.05 (not supported)")
    assert decide(BELOW, _ci(-0.2, -0.1), ceiling=MISSED).reason == (
        "the ceiling joint/hops composed: 0.100 (threshold 0.5) does not reach its threshold: nothing here could "
        "show the claim")


def test_verdict_json_holds_every_field():
    values = SPREAD[:5]
    verdict = judge(BELOW, values, np.random.default_rng(4), units=4, ceiling=REACHED)
    stored = json.loads(json.dumps(verdict.as_json()))
    assert stored == {"claim": "EDGE-1", "outcome": SUPPORTED, "reading": SUPPORTED, "units": 4,
                      "reason": verdict.reason, "summary": bootstrap_interval(values, np.random.default_rng(4)).as_json(),
                      "direction": "below", "margin": 0.05, "margin_reason": "a test margin",
                      "ceiling": REACHED.as_json()}
    assert stored["reason"].startswith("the 95% CI [") and "lies entirely below the margin 0.05" in stored["reason"]
    assert Summary(**stored["summary"]) == verdict.summary
    assert decide(BELOW, _ci(-0.2, -0.1)).as_json()["ceiling"] is None


def test_judge_bootstraps_within_the_bounds_it_is_given():
    verdict = judge(ABOVE, [0.5], np.random.default_rng(0), ACCURACY)
    assert (verdict.summary.low, verdict.summary.high, verdict.outcome) == (0.0, 1.0, UNDERPOWERED)
    with pytest.raises(ValueError, match="outside the metric's range"):
        judge(ABOVE, [1.5, 0.5, 0.5], np.random.default_rng(0), ACCURACY)


def test_robust_only_if_supported_under_every_recipe():
    yes, no = decide(BELOW, _ci(-0.2, -0.1)), decide(BELOW, _ci(0.0, 0.2))
    assert robust({"stop_at_memorised": yes, "fixed_300": yes})
    assert robust({"only": yes})
    assert not robust({"stop_at_memorised": yes, "fixed_300": no})
    assert not robust({"a": decide(BELOW, _ci(-0.2, -0.1), units=2)})  # underpowered is not supported
    with pytest.raises(ValueError, match=r"^no recipes: robustness needs the verdict of at least one fine-tune "
                                         r"recipe$"):
        robust({})


def test_the_five_words():
    assert OUTCOMES == ("supported", "not supported", "inconclusive", "underpowered", "not testable")


def test_bad_claims_name_the_problem():
    with pytest.raises(ValueError, match=r"^claim X: margin=nan; must be a finite number$"):
        Claim("X", "s", "q", "below", float("nan"), "r")
    for reason in ("", "   "):
        with pytest.raises(ValueError, match=r"^claim X: margin_reason='\s*'; give one sentence saying why the margin "
                                             r"is 0.05 \(what it corresponds to, or that it is a convention\)$"):
            Claim("X", "s", "q", "below", 0.05, reason)
    with pytest.raises(ValueError, match=r"^claim X: direction='sideways'; must be 'below' or 'above'$"):
        Claim("X", "s", "q", "sideways", 0.0, "r")


def test_default_draws_are_the_claims_own_stream():
    """No global RNG: a verdict without an explicit generator draws from the claim's named stream."""
    values = SPREAD
    assert BOOTSTRAP_SEED == 0
    assert judge(BELOW, values).summary == bootstrap_interval(values, numpy_rng(0, "bootstrap", "EDGE-1"))
    assert claim_rng("EDGE-1", "recipe", "a").random() == numpy_rng(0, "bootstrap", "EDGE-1", "recipe", "a").random()
