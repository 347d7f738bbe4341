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
    """Only the keys the fixture has: outputs may gain metrics (issue 12), never lose or change one."""
    diffs = reg.differences(want, got, new_keys=True)
    assert not diffs, f"{len(diffs)} differences, first: " + "; ".join(diffs[:5])


def test_differences_finds_a_changed_number():
    """The comparison itself can fail: one number moved by 1e-5 or a key renamed is reported."""
    assert reg.differences({"a": [1.0, {"b": 2}]}, {"a": [1.0 + 1e-5, {"b": 2}]}) == ["/a[0]: 1.00001 != 1.0"]
    assert reg.differences({"a": 1}, {"b": 1}) == ["/a: missing", "/b: unexpected"]
    assert reg.differences({"a": {"x": 1}}, {"a": {"x": 1, "y": 2}, "b": 1}, new_keys=True) == []
    assert reg.differences({"a": {"x": 1}}, {"a": {"x": 2, "y": 2}}, new_keys=True) == ["/a/x: 2 != 1"]
    assert reg.differences({"a": float("nan")}, {"a": float("nan")}) == []


def test_experiment_grid_keys_are_unchanged():
    """Every recorded experiment keeps its keys; an experiment added since adds keys and changes none."""
    check(WANT["grid_keys"], {name: keys for name, keys in reg.grid_keys().items() if name in WANT["grid_keys"]})


def test_toy_two_hop_split_r_is_unchanged():
    check(WANT["toy_two_hop_cot_R"], reg.toy_run_r())


def test_pretrained_two_hop_is_unchanged():
    pytest.importorskip("transformers")
    check(WANT["pretrained_two_hop"], reg.pretrained_run())


@pytest.mark.slow
def test_toy_two_hop_every_split_is_unchanged():
    check(WANT["toy_two_hop"], reg.toy_runs())
