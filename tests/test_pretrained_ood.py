"""The pretrained protocol's O split (real entities no expert ever composes), its retention sets,
and the claims that read them (PRE-1-O, PRE-OOD-*), on planted data both ways."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from analysis import registry
from analysis.registry import Result
from toymodels.tasks import natural
from toymodels.tasks.natural import (OOD_WORLD, TEMPLATES, WORLD, NaturalConfig, eval_pairs, expert_pairs,
                                     known_fact_pairs, make_chains)
from toymodels.tasks.natural_probes import retention_pairs

pytest.importorskip("transformers")
from analysis.experiments import pretrained_two_hop as exp  # noqa: E402


def test_o_split_is_outside_ac_from_its_own_table_and_leaves_the_other_splits_alone():
    base = NaturalConfig(n_countries=3, cities_per_country=3, ac_frac=0.34)
    with_o = dataclasses.replace(base, ood_countries=4)
    for seed in range(3):
        plain, more = (make_chains(c, np.random.default_rng(seed)) for c in (base, with_o))
        assert [c for c in more if c.familiarity != "O"] == plain  # F, H, R drawn first, unchanged
        o = [c for c in more if c.familiarity == "O"]
        assert len({c.country for c in o}) == 4 and len(o) == 4 * 3 * 2
        assert not any(c.in_ac for c in o) and {c.country for c in o} <= {row[0] for row in OOD_WORLD}
        assert not {c.country for c in o} & {c.country for c in plain}
        sets = eval_pairs(more)
        assert "O/two_hop_seen" not in sets and len(sets["O/two_hop_unseen"]) == 24
        trained = expert_pairs(more)
        assert not set(sets["O/two_hop_unseen"]) & set(trained["AC"])  # never composed in training
        assert {c.hop1() for c in o} <= set(trained["AB"]) and {c.hop2() for c in o} <= set(trained["BC"])


def test_o_split_keeps_only_what_the_model_knows():
    cfg = NaturalConfig(n_countries=1, cities_per_country=2, ood_countries=3)
    england, canada = OOD_WORLD[0], OOD_WORLD[1]
    known = {(TEMPLATES["capital"].format(B=c), " " + cap) for c, cap, _, _ in (england, canada)}
    known |= {(TEMPLATES["language"].format(B=c), " " + lang) for c, _, lang, _ in (england, canada)}
    known |= {(TEMPLATES["in_country"].format(A=city), " England") for city in england[3]}
    known |= {(TEMPLATES["in_country"].format(A=canada[3][0]), " Canada")}  # one known city: too few
    o = [c for c in make_chains(cfg, np.random.default_rng(0), known) if c.familiarity == "O"]
    assert {c.country for c in o} == {"England"} and len(o) == 2 * 2  # fewer countries than asked
    assert not [c for c in make_chains(cfg, np.random.default_rng(0), set()) if c.familiarity == "O"]


def test_ood_names_cannot_be_drawn_as_fictional_names():
    """A fictional name is (consonant onset + vowel){1,2} + an ending of its kind; no real name of
    either table has that form, so adding OOD_WORLD to the taken names changes no draw."""
    onsets, vowels = "|".join(natural._ONSETS), "|".join(natural._VOWELS)
    endings = "|".join(e for es in natural._ENDINGS.values() for e in es)
    form = re.compile(rf"(?:(?:{onsets})(?:{vowels})){{1,2}}(?:{endings})")
    names = [n for row in WORLD + OOD_WORLD for n in (*row[:3], *row[3])]
    assert not [n for n in names if form.fullmatch(n.lower())]
    assert form.fullmatch(natural.fictional_name(np.random.default_rng(0), "city", set()).lower())


def test_ood_countries_is_checked():
    with pytest.raises(ValueError, match="ood_countries"):
        NaturalConfig(ood_countries=len(OOD_WORLD) + 1)
    assert "ood_countries" not in NaturalConfig().to_dict()  # opt-in: old cache keys hold


def test_retention_sets_hold_known_untrained_facts_and_untouched_chains():
    cfg = NaturalConfig(n_countries=2, cities_per_country=2, ood_countries=1)
    chains = make_chains(cfg, np.random.default_rng(1))
    facts = known_fact_pairs(ood=True)
    known = set(facts[::2])  # every other fact
    out = retention_pairs(chains, known, cfg.relations2, 1000, np.random.default_rng(0))
    trained = {p for ps in expert_pairs(chains).values() for p, _ in ps}
    assert out["retain/facts"] == [p for p in facts if p in known and p[0] not in trained]
    used = {c.country for c in chains}
    by_city = {city: row for row in WORLD + OOD_WORLD for city in row[3]}
    for prompt, answer in out["retain/chains"]:
        city = next(c for c in by_city if prompt.endswith(f"city of {c} is located is"))
        country, capital, language, _ = by_city[city]
        assert country not in used and answer.strip() in (capital, language)
        assert (TEMPLATES["in_country"].format(A=city), " " + country) in known
    assert out["retain/chains"]
    small = retention_pairs(chains, known, cfg.relations2, 5, np.random.default_rng(0))
    assert [len(v) for v in small.values()] == [5, 5]
    assert set(small["retain/facts"]) <= set(out["retain/facts"])
    assert retention_pairs(chains, set(), cfg.relations2, 5, np.random.default_rng(0)) == {}


# --- claims on planted data ------------------------------------------------------------------------

def _result(seed: int, spec: dict[str, dict[str, float]], o: bool = True) -> Result:
    """A hand-made result: per model, per split, the specificity logprob margin (exact = /10)."""
    c = dataclasses.replace(exp.grid("quick")[0], seed=seed)
    table = {m: {f: {"composed": 0.0, "specificity": {"logprob_margin": v, "exact_margin": v / 10}}
                 for f, v in fams.items() if o or f != "O"} for m, fams in spec.items()}
    questions = {f: {"composed": 24} for f in ("F", "H", "R", "O") if o or f != "O"}
    return Result(c.key(), c, {"table": table, "protocol": {"questions": questions, "experts": {}}})


def _measure(claim_id: str):
    return next(m for m in registry.get("pretrained_two_hop").claims if m.claim.id == claim_id)


@pytest.mark.parametrize("in_dist, out_dist, outcome", [(3.0, 1.0, "supported"), (1.0, 3.0, "not supported")])
def test_pre_ood_reads_reuse_gain_in_r_minus_o_both_ways(in_dist, out_dist, outcome):
    """with_AC reuse gains (over the base) more on R than on O: supported; swap them: not."""
    from analysis.report import judge_measure

    results = [_result(s, {"base": {"R": 0.5, "O": 0.2}, "joint/with_AC": {"R": 2.0, "O": 2.0},
                           "average/with_AC": {"R": 0.5 + in_dist + s / 10, "O": 0.2 + out_dist},
                           "arrow/with_AC": {"R": 0.5 + in_dist, "O": 0.2 + out_dist}}) for s in range(3)]
    measure = _measure("PRE-OOD-logprob")
    values = measure.per_seed(results)
    assert values == pytest.approx([in_dist - out_dist + s / 20 for s in range(3)])  # mean over the two methods
    assert judge_measure(measure, results)[0].outcome == outcome
    exact = _measure("PRE-OOD-exact").per_seed(results)
    assert exact == pytest.approx([v / 10 for v in values])
    for r in results:  # the joint LoRA composes nothing in distribution: nothing to compare against
        r.result["table"]["joint/with_AC"]["R"]["specificity"]["logprob_margin"] = 0.5
    assert judge_measure(measure, results)[0].outcome == "not testable"


def test_claims_on_o_are_not_measured_without_the_o_split():
    from analysis.report import missing

    spec = {"base": {"R": 0.5, "O": 0.2}, "joint/hops": {"R": 2.0, "O": 2.0}}
    without = [_result(s, spec, o=False) for s in range(3)]
    with_o = [_result(s, spec) for s in range(3)]
    for claim_id in ("PRE-1-O-logprob", "PRE-1-O-exact", "PRE-OOD-logprob", "PRE-OOD-exact"):
        assert "split O" in missing(_measure(claim_id), without)
        assert missing(_measure(claim_id), with_o) is None
    assert missing(_measure("PRE-1-R-logprob"), without) is None
    from analysis.experiments.pretrained_claims import questions

    assert questions(without) == {"F": 24, "H": 24, "R": 24} and questions(with_o)["O"] == 24


def test_retention_detail_reports_base_and_reuse():
    from analysis.experiments.pretrained_claims import retained

    results = [_result(s, {"base": {"R": 0.0}}) for s in range(2)]
    for i, r in enumerate(results):
        r.result["retention"] = {"base": {"retain/facts": 1.0, "retain/chains": 0.5},
                                 "average/hops": {"retain/facts": 0.6 + i / 10, "retain/chains": 0.25}}
    line = retained(results)
    assert "facts: base 1.00, average/hops 0.65" in line and "chains: base 0.50, average/hops 0.25" in line
    for r in results:
        r.result["retention"] = {}
    assert retained(results) == ""
