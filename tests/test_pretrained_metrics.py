"""The shared metrics on natural-language two-hop questions (toymodels/pretrained_metrics.py),
on planted per-row scores checked against hand-computed values, and the probes' wrong answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toymodels.pretrained_metrics import split_metrics, split_probes
from toymodels.tasks.natural import NaturalConfig, eval_pairs, make_chains


def chains_and_sets(seed: int = 0):
    cfg = NaturalConfig(n_countries=3, cities_per_country=3, ac_frac=0.34, relations2=("capital", "language"))
    chains = make_chains(cfg, np.random.default_rng(seed))
    return chains, eval_pairs(chains)


def test_probes_pick_other_answers_of_the_same_relation():
    chains, sets = chains_and_sets()
    probes = split_probes(chains, sets, 2, np.random.default_rng(0))
    assert [p.familiarity for p in probes] == ["F", "H", "R"]
    answer = {c.two_hop(): c for c in chains}
    for p in probes:
        assert p.composed == sets[f"{p.familiarity}/two_hop_unseen"] and len(p.composed) == 3 * 2 * 2
        for i, (prompt, wrong) in p.wrong:
            gold = answer[p.composed[i]]
            assert prompt == p.composed[i][0] and wrong != " " + gold.answer
            assert wrong.strip() in {c.answer for c in chains if c.relation == gold.relation
                                     and c.familiarity == p.familiarity}
        assert [sum(i == q for i, _ in p.wrong) for q in range(len(p.composed))] == [2] * len(p.composed)
        for q, (a, b) in zip(p.composed, p.hops):  # each question's own one-hop rows
            c = answer[q]
            assert sets[f"{p.familiarity}/one_hop_AB"][a] == c.hop1() and sets[f"{p.familiarity}/one_hop_BC"][b] == c.hop2()
    with pytest.raises(ValueError, match="n_wrong=0"):
        split_probes(chains, sets, 0, np.random.default_rng(0))


def test_metrics_match_hand_computed_values():
    """Planted per-row scores for F: 12 questions; specificity, conditional and the margins
    are computed here independently, question by question."""
    chains, sets = chains_and_sets()
    probes = [p for p in split_probes(chains, sets, 2, np.random.default_rng(1)) if p.familiarity == "F"]
    p, g = probes[0], torch.Generator().manual_seed(0)
    n = len(p.composed)
    per_set = {name: (torch.rand(len(rows), generator=g) > 0.5, -3 * torch.rand(len(rows), generator=g))
               for name, rows in sets.items() if name.startswith("F/")}
    wrong = (torch.rand(len(p.wrong), generator=g) > 0.7, -4 * torch.rand(len(p.wrong), generator=g))
    got = split_metrics(per_set, probes, wrong)["F"]
    exact, lp = per_set["F/two_hop_unseen"]
    rights, wrongs, lp_margins, hits, knows = [], [], [], [], []
    for q in range(n):
        mine = [k for k, (i, _) in enumerate(p.wrong) if i == q]
        rights.append(math.exp(lp[q]))
        wrongs.append(np.mean([math.exp(wrong[1][k]) for k in mine]))
        lp_margins.append(float(lp[q]) - np.mean([float(wrong[1][k]) for k in mine]))
        hits.append(any(bool(wrong[0][k]) for k in mine))
        a, b = p.hops[q]
        knows.append(bool(per_set["F/one_hop_AB"][0][a]) and bool(per_set["F/one_hop_BC"][0][b]))
    spec = got["specificity"]
    assert got["composed"] == pytest.approx(exact.float().mean().item())
    assert got["composed_logprob"] == pytest.approx(lp.mean().item())
    assert spec["right"] == pytest.approx(np.mean(rights)) and spec["wrong"] == pytest.approx(np.mean(wrongs))
    assert spec["margin"] == pytest.approx(np.mean(rights) - np.mean(wrongs))
    assert spec["logprob_margin"] == pytest.approx(np.mean(lp_margins), abs=1e-6)
    assert spec["wrong_exact"] == pytest.approx(np.mean(hits))
    assert spec["exact_margin"] == pytest.approx(exact.float().mean().item() - np.mean(hits))
    want = [bool(exact[q]) for q in range(n) if knows[q]]
    assert got["conditional"]["n"] == len(want) > 0
    assert got["conditional"]["composed"] == pytest.approx(np.mean(want))


def test_conditional_is_null_when_no_hop_pair_is_known():
    chains, sets = chains_and_sets()
    probes = [p for p in split_probes(chains, sets, 1, np.random.default_rng(1)) if p.familiarity == "H"]
    per_set = {name: (torch.zeros(len(rows), dtype=torch.bool) | name.endswith("unseen"), -torch.ones(len(rows)))
               for name, rows in sets.items() if name.startswith("H/")}
    wrong = (torch.zeros(len(probes[0].wrong), dtype=torch.bool), -2 * torch.ones(len(probes[0].wrong)))
    got = split_metrics(per_set, probes, wrong)["H"]
    assert got["composed"] == 1.0 and got["conditional"] == {"composed": None, "n": 0}
    assert got["specificity"]["logprob_margin"] == pytest.approx(1.0)  # -1 vs -2 on every prompt
    assert got["specificity"]["exact_margin"] == 1.0
