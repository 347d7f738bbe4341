"""``pretrained_peft`` (PEFT's LoRA vs ours on the pretrained protocol, issue 13 item 5): its grid
pairs each ``pretrained_two_hop`` config with both backends, an ``ours`` result already cached by
``pretrained_two_hop`` is reused and not recomputed, and the PEFT-1 measures are the largest
|peft - ours| over (model, split) cells, paired by seed. The verdicts' flips on planted values are
in tests/test_claims_planted.py (every registered claim); the backends' agreement on a tiny model
is tests/test_peft_backend.py."""
from __future__ import annotations

import pytest

from analysis.cache import ResultCache, make_record
from analysis.experiments import pretrained_peft as pp
from analysis.experiments import pretrained_two_hop as two_hop
from analysis.registry import Result

MODELS = ("base", "single/AB", "average/hops")


def _table(composed: dict[str, float], margin: dict[str, float]) -> dict:
    return {m: {"F": {"composed": composed[m], "specificity": {"logprob_margin": margin[m]}},
                "R": None} for m in MODELS}


def _results(shift_model: str, d_composed: float, d_margin: float, seeds=(0, 1, 2)) -> list[Result]:
    """Both backends per seed; PEFT differs from ours only at ``shift_model``."""
    out = []
    for c in pp.grid("paper"):  # seeds 0, 1, 2
        if c.seed not in seeds:
            continue
        composed = {m: 0.25 + 0.1 * i for i, m in enumerate(MODELS)}
        margin = {m: -1.0 + i for i, m in enumerate(MODELS)}
        if c.lora_backend == "peft":
            composed[shift_model] += d_composed
            margin[shift_model] += d_margin
        out.append(Result(c.key(), c, {"model": "tiny", "seed": c.seed, "table": _table(composed, margin)}))
    return out


def test_grid_pairs_every_two_hop_config_with_both_backends():
    for profile in ("quick", "paper"):
        ours = two_hop.grid(profile)
        grid = pp.grid(profile)
        assert len(grid) == 2 * len(ours)
        assert {c.key() for c in grid if c.lora_backend == "ours"} == {c.key() for c in ours}
        assert sorted((c.seed, c.lora_backend) for c in grid) == sorted(
            (c.seed, b) for c in ours for b in ("ours", "peft"))


def test_disagreement_is_the_largest_absolute_difference_per_seed():
    for d in (0.3, -0.3):
        results = _results("average/hops", d_composed=d / 3, d_margin=d)
        assert pp.disagreement("logprob_margin")(results) == pytest.approx([abs(d)] * 3, abs=1e-12)
        assert pp.disagreement("composed")(results) == pytest.approx([abs(d) / 3] * 3, abs=1e-12)
    assert pp.disagreement("logprob_margin")(_results("base", 0.0, 0.0)) == [0.0] * 3


def test_swapping_the_backends_gives_the_same_disagreement():
    results = _results("single/AB", 0.125, 0.8)
    swapped = [Result(r.key, r.config.__class__(**{**r.config.__dict__, "lora_backend":
                                                   "ours" if r.config.lora_backend == "peft" else "peft"}), r.result)
               for r in results]
    assert pp.disagreement("logprob_margin")(swapped) == pp.disagreement("logprob_margin")(results)


def test_a_seed_missing_a_backend_gives_no_value():
    results = [r for r in _results("base", 0.1, 0.1) if not (r.config.seed == 2 and r.config.lora_backend == "peft")]
    assert len(pp.disagreement("composed")(results)) == 2
    assert "underpowered: 2 paired seed(s)" in pp.detail(results)


def test_an_ours_result_cached_by_pretrained_two_hop_is_reused(tmp_path, monkeypatch):
    config = next(c for c in pp.grid("quick") if c.lora_backend == "ours")
    stored = {"model": "cached", "seed": config.seed, "table": {}}
    ResultCache(tmp_path, "pretrained_two_hop").store(make_record("pretrained_two_hop", config, stored, {}, "cpu"))
    calls = []
    monkeypatch.setattr(two_hop, "run", lambda c, device, results: calls.append(c) or {"model": "fresh"})
    assert pp.run(config, "cpu", tmp_path) == stored
    assert calls == []
    peft = next(c for c in pp.grid("quick") if c.lora_backend == "peft" and c.seed == config.seed)
    assert pp.run(peft, "cpu", tmp_path) == {"model": "fresh"}
    other = next(c for c in pp.grid("quick") if c.lora_backend == "ours" and c.seed != config.seed)
    assert pp.run(other, "cpu", tmp_path) == {"model": "fresh"}
    assert calls == [peft, other]
