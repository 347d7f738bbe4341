"""The reuse protocol's numbers and the experiments' cache keys are those recorded in
tests/fixtures/protocol_regression.json (tests/protocol_regression.py: before the protocol was
factored into one module, issue 10, and again for the seed rule): a refactor that changes a
number, a draw (a seed stream) or a config key fails here, naming the first differences."""
from __future__ import annotations

import json

import pytest

from tests import protocol_regression as reg

WANT = json.loads(reg.FIXTURE.read_text())


def check(want, got) -> None:
    diffs = reg.differences(want, got)
    assert not diffs, f"{len(diffs)} differences, first: " + "; ".join(diffs[:5])


def test_differences_finds_a_changed_number():
    """The comparison itself can fail: one number moved by 1e-5 or a key renamed is reported."""
    assert reg.differences({"a": [1.0, {"b": 2}]}, {"a": [1.0 + 1e-5, {"b": 2}]}) == ["/a[0]: 1.00001 != 1.0"]
    assert reg.differences({"a": 1}, {"b": 1}) == ["/a: missing", "/b: unexpected"]
    assert reg.differences({"a": float("nan")}, {"a": float("nan")}) == []


def test_experiment_grid_keys_are_unchanged():
    check(WANT["grid_keys"], reg.grid_keys())


def test_toy_two_hop_split_r_is_unchanged():
    check(WANT["toy_two_hop_cot_R"], reg.toy_run_r())


def test_pretrained_two_hop_is_unchanged():
    pytest.importorskip("transformers")
    check(WANT["pretrained_two_hop"], reg.pretrained_run())


@pytest.mark.slow
def test_toy_two_hop_every_split_is_unchanged():
    check(WANT["toy_two_hop"], reg.toy_runs())
