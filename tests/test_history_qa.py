"""The history/geography QA data (toymodels/tasks/history_qa.py): splits disjoint, fictional
names not real, OOD entities never in any expert's data, the known-facts filter, AC shares,
broadcast controls and config errors. Pure data: no model."""
from __future__ import annotations

import numpy as np
import pytest

from toymodels.seeds import numpy_rng
from toymodels.tasks import history_qa as h
from toymodels.tasks.natural import WORLD

CFG = h.QAConfig(n_countries=2, cities_per_country=3, n_real=6, n_ood=6, relations2=("country", "continent"))


def chains(seed: int = 0, cfg: h.QAConfig = CFG, known=None):
    return h.make_chains(cfg, numpy_rng(seed, "qa", "chains"), known)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_are_disjoint_and_sized(seed):
    ch = chains(seed)
    people = {sp: {c.person for c in ch if c.split == sp} for sp in h.SPLITS}
    cities = {sp: {c.city for c in ch if c.split == sp} for sp in h.SPLITS}
    assert {sp: len(p) for sp, p in people.items()} == {"F": 6, "H": 6, "R": 6, "OOD": 6}
    for i, a in enumerate(h.SPLITS):
        for b in h.SPLITS[i + 1:]:
            assert not people[a] & people[b] and not cities[a] & cities[b], (a, b)
    assert len(ch) == 24 * 2 and {c.relation for c in ch} == {"country", "continent"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fictional_names_are_not_real(seed):
    real = h.real_words()
    assert {"Einstein", "Germany", "Ulm", "Europe", "Paris"} <= real  # the check below can fail
    ch = chains(seed)
    made_up = [c.person for c in ch if c.split in ("F", "H")] + [n for c in ch if c.split == "F"
                                                                  for n in (c.city, c.answer)]
    assert made_up and not {w for n in made_up for w in n.split()} & real
    assert all(c.city in h.CITY_COUNTRY for c in ch if c.split != "F")
    assert all(c.answer == h.real_answer(c.city, c.relation) for c in ch if c.split != "F")
    assert all(p not in {q for q, _, _ in h.PEOPLE} for p in made_up)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_entities_never_in_expert_data(seed):
    ch = chains(seed)
    text = " ".join(q + a for pairs in h.expert_pairs(ch).values() for q, a in pairs)
    ood = [c for c in ch if c.split == "OOD"]
    assert ood and not any(c.in_ac for c in ood)
    for c in ood:
        assert c.person not in text and f" {c.city} " not in f" {text} ".replace(",", " "), c
    for c in (c for c in ch if c.split == "R"):  # the check is not vacuous: R people are in the data
        assert c.person in text


def test_experts_and_composed_sets():
    ch = chains(0)
    pairs = h.expert_pairs(ch)
    trained = [c for c in ch if c.split in h.TRAINED]
    assert set(pairs["AB"]) == {c.hop1() for c in trained} and set(pairs["BC"]) == {c.hop2() for c in trained}
    assert set(pairs["AC"]) == {c.two_hop() for c in trained if c.in_ac}
    for sp in h.TRAINED:  # ac_frac 0.5 of each country's 3 cities (F, H) or of R's 6 people
        mine = [c for c in ch if c.split == sp and c.relation == "country"]
        assert sum(c.in_ac for c in mine) == (4 if sp in "FH" else 3)
        assert h.composed_chains(ch, sp) == [c for c in ch if c.split == sp and not c.in_ac]
        assert not set(c.two_hop() for c in h.composed_chains(ch, sp)) & set(pairs["AC"])
    f = [c for c in ch if c.split == "F" and c.relation == "country"]
    for country in {c.answer for c in f}:  # every fictional country has AC and test cities
        assert {c.in_ac for c in f if c.answer == country} == {True, False}


def test_known_filter():
    facts = h.known_fact_pairs(CFG.relations2)
    assert len(facts) == len(h.PEOPLE) + 2 * len(h.CITY_COUNTRY)
    keep = {"Albert Einstein", "Marie Curie", "Karl Marx", "Dante Alighieri"}
    known = {(q, a) for q, a in facts if not q.endswith("was born in the city of") or q.split(" was")[0] in keep}
    known -= {(h.TEMPLATES["country"].format(A="Trier"), " Germany")}  # Marx's city's country unknown
    ch = chains(0, known=known)
    real = {c.person for c in ch if c.split in ("R", "OOD")}
    assert real == keep - {"Karl Marx"}
    h_cities = {c.city for c in ch if c.split == "H"}
    assert len(h_cities) == 6 and "Trier" not in h_cities
    free = chains(0)
    assert [c for c in ch if c.split == "F"] == [c for c in free if c.split == "F"]
    assert not [c for c in chains(0, known=set()) if c.split in ("H", "R", "OOD")]


def test_same_seed_same_chains_other_seed_other_chains():
    assert chains(0) == chains(0) and chains(0) != chains(1)


def test_real_tables_are_consistent():
    assert len({p for p, _, _ in h.PEOPLE}) == len(h.PEOPLE)  # distinct people
    assert all(h.CITY_COUNTRY[city] == country for _, city, country in h.PEOPLE)  # one country per city
    assert len({city for _, city, _ in h.PEOPLE}) < len(h.PEOPLE)  # shared birth cities exist: the split test bites
    world = {c: row[0] for row in WORLD for c in (row[1], *row[3])}
    assert all(world.get(city, country) == country for _, city, country in h.PEOPLE)
    assert set(h.CITY_COUNTRY.values()) <= set(h.CONTINENT)


def test_broadcast_controls_ask_about_other_subjects():
    ch = chains(0)
    controls = h.broadcast_controls(ch, 4, numpy_rng(0, "qa", "controls"))
    assert {c.name for c in controls} == {f"{s}/{e}/{r}" for s in h.TRAINED for e in ("BC", "AC")
                                          for r in ("country", "continent")}
    subjects = {c.person for c in ch} | {c.city for c in ch}
    for c in controls:
        mine = [x for x in ch if x.split == c.familiarity and x.relation == c.relation]
        trained = mine if c.expert == "BC" else [x for x in mine if x.in_ac]
        assert set(c.new_answers) == {x.answer for x in trained}
        assert len(c.questions) == 4 and not set(c.golds) & set(c.new_answers)
        assert not any(s in q for q in c.questions for s in subjects)


@pytest.mark.parametrize("change, field", [
    pytest.param({"n_countries": 0}, "task.n_countries", id="no-countries"),
    pytest.param({"cities_per_country": 5}, "task.cities_per_country", id="too-many-cities"),
    pytest.param({"n_real": 100, "n_ood": len(h.PEOPLE) - 99}, "task.n_ood", id="too-many-people"),
    pytest.param({"ac_frac": 1.5}, "task.ac_frac", id="ac_frac"),
    pytest.param({"ac_frac": 0.1}, "task.ac_frac", id="no-AC-rows"),
    pytest.param({"ac_frac": 1.0}, "task.ac_frac", id="no-test-questions"),
    pytest.param({"relations2": ("capital",)}, "task.relations2", id="relation"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        h.QAConfig(**change)


def test_generated_names_avoid_every_real_word(monkeypatch):
    """Planted: make the names one seed generates 'real'; the same seed must then avoid them."""
    first = {w for c in chains(0) if c.split in ("F", "H") for n in (c.person, c.city, c.answer) for w in n.split()}
    planted = h.real_words() | first
    monkeypatch.setattr(h, "real_words", lambda: set(planted))
    again = {w for c in chains(0) if c.split in ("F", "H") for n in (c.person, c.city, c.answer) for w in n.split()}
    made_up = {w for c in chains(0) if c.split == "F" for n in (c.person, c.city, c.answer) for w in n.split()}
    assert made_up and not made_up & first and again - planted


def test_hybrid_cities_avoid_real_peoples_cities():
    """R and OOD people all born in WORLD cities; H takes cities of every WORLD country it can."""
    in_world = {"Marie Curie", "Fyodor Dostoevsky", "Johann Wolfgang von Goethe", "Antonio Vivaldi",
                "Fernando Pessoa", "Akira Kurosawa"}
    known = {(q, a) for q, a in h.known_fact_pairs(("country",))
             if not q.endswith("was born in the city of") or q.split(" was")[0] in in_world}
    cfg = h.QAConfig(n_countries=16, cities_per_country=3, n_real=3, n_ood=3)
    ch = chains(0, cfg, known)
    real_cities = {c.city for c in ch if c.split in ("R", "OOD")}
    assert len(real_cities) == 6 and real_cities <= {c for row in WORLD for c in (row[1], *row[3])}
    assert not real_cities & {c.city for c in ch if c.split == "H"}


def test_real_and_ood_keep_each_city_in_one_split():
    """Planted order: R fills first; a person whose city is the other split's is skipped."""
    people = [("a", "X"), ("b", "Y"), ("c", "X"), ("d", "Z"), ("e", "Y"), ("f", "W")]
    real, ood = h._real_and_ood(people, h.QAConfig(n_real=2, n_ood=3))
    assert [p for p, _, _ in real] == ["a", "b"] and [p for p, _, _ in ood] == ["d", "f"]  # c (X), e (Y) are R's
    real, ood = h._real_and_ood(people, h.QAConfig(n_real=3, n_ood=2))
    assert [p for p, _, _ in real] == ["a", "b", "c"] and [p for p, _, _ in ood] == ["d", "f"]  # same city in R: fine


def test_people_sharing_a_city_stay_in_one_split():
    """Known: every person born in Paris, Venice, Florence or Rome (several each); R and OOD
    must not share a city, and OOD's cities stay out of every expert's data."""
    shared = {"Paris", "Venice", "Florence", "Rome"}
    known = {(q, a) for q, a in h.known_fact_pairs(("country",))
             if not q.endswith("was born in the city of") or a.strip() in shared}
    assert sum(city in shared for _, city, _ in h.PEOPLE) > len(shared) + 4  # the planted table shares cities
    filled = 0
    for seed in range(6):
        ch = chains(seed, h.QAConfig(n_real=3, n_ood=6), known)
        r, o = ({c.city for c in ch if c.split == sp} for sp in ("R", "OOD"))
        assert len([c for c in ch if c.split == "R"]) == 3 and r <= shared and not r & o
        text = " ".join(q + a for pairs in h.expert_pairs(ch).values() for q, a in pairs)
        assert not any(city in text for city in o)
        filled += bool(o) and len([c for c in ch if c.split == "OOD"]) > len(o)  # OOD people sharing a city
    assert filled  # the disjointness above was tested on non-empty OOD splits with shared cities
