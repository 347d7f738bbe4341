"""History/geography QA in natural language for a pretrained causal LM (issue 10 item 3).

A chain is ``P -born_in-> A -r2-> C``: a person P, the city A where P was born, and A's
country or continent C (``r2`` in :data:`RELATIONS2`). Sentences::

    AB (hop 1)   "{P} was born in the city of"                          -> " {A}"
    BC (hop 2)   "The city of {A} is located in the country of"         -> " {C}"
    AC (2-hop)   "{P} was born in a city located in the country of"     -> " {C}"

Splits (the F / H / R / OOD of the verdicts issue), subjects (people and cities) disjoint:

- ``F``: fictional people born in fictional cities of fictional countries (and continents);
  every hop is new to the model.
- ``H``: fictional people born in real cities (``natural.WORLD``): hop 1 is new, hop 2 is
  the model's own knowledge (BC re-states it).
- ``R``: real people of :data:`PEOPLE`; with ``known`` only those whose birthplace and its
  r2 the base answers, so both hops are knowledge the model HAS.
- ``OOD``: more real people the base knows, never in any expert's data: neither the person
  nor the birth city appears in AB, BC or AC (their answers C may, as answers of others).
  Only evaluated: does what the adapters taught transfer to composed questions about
  entities the model knows but never saw composed in fine-tuning?

Experts, one set for F, H and R: ``AB`` every hop-1 sentence, ``BC`` every hop-2 sentence,
``AC`` the two-hop sentences of the ``ac_frac`` share of each split's people (``in_ac``);
the others' two-hop questions are the composed test. Pure: data in, data out; the one-hop
real facts are a table here, whether the model knows them is measured
(:func:`known_fact_pairs`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toymodels.config import Config, check_fields, counts
from toymodels.tasks.history_people import CONTINENTS, PEOPLE
from toymodels.tasks.natural import TEMPLATES as NATURAL_TEMPLATES
from toymodels.tasks.natural import WORLD, fictional_name
from toymodels.tasks.natural_probes import Control, draw_controls

SPLITS = ("F", "H", "R", "OOD")
TRAINED = ("F", "H", "R")  # the splits whose facts the experts learn
RELATIONS2 = ("country", "continent")
# Unmeasured wordings (no SmolLM2 in the session that wrote them): hop 2 "country" is
# natural.py's measured in_country template (77% one-hop exact match on WORLD).
TEMPLATES = {
    "born_in": "{P} was born in the city of",
    "country": NATURAL_TEMPLATES["in_country"],
    "continent": "The city of {A} is located on the continent of",
    "two_hop_country": "{P} was born in a city located in the country of",
    "two_hop_continent": "{P} was born in a city located on the continent of",
}

CONTINENT = {country: continent for continent, members in CONTINENTS.items() for country in members}
# every real city this module names -> its country: birth cities and natural.WORLD's cities
CITY_COUNTRY = {**{city: country for country, capital, _, cities in WORLD for city in (capital, *cities)},
                **{city: country for _, city, country in PEOPLE}}


@dataclass(frozen=True)
class QAConfig(Config):
    """Sizes. F: ``n_countries`` fictional countries x ``cities_per_country`` cities, one
    person born in each; H: as many real cities of ``n_countries`` WORLD countries; R and
    OOD: ``n_real`` and ``n_ood`` people of :data:`PEOPLE` (fewer when too few are known)."""

    n_countries: int = 2
    cities_per_country: int = 3
    n_real: int = 6
    n_ood: int = 6
    ac_frac: float = 0.5
    relations2: tuple[str, ...] = ("country",)

    def __post_init__(self):
        check_fields("task", self, {
            **counts(self, {"n_countries": 1, "cities_per_country": 1, "n_real": 0, "n_ood": 0}),
            "ac_frac": (0.0 <= self.ac_frac <= 1.0, "in [0, 1]"),
            "relations2": (bool(self.relations2) and all(r in RELATIONS2 for r in self.relations2),
                           f"a non-empty subset of {RELATIONS2}")})
        check_fields("task", self, {
            "n_countries": (self.n_countries <= len(WORLD), f"<= {len(WORLD)} (H draws WORLD countries)"),
            "cities_per_country": (self.cities_per_country <= 4, "<= 4 (a WORLD country has 4 cities)"),
            "n_ood": (self.n_real + self.n_ood <= len(PEOPLE), f"<= {len(PEOPLE)} - n_real (PEOPLE has {len(PEOPLE)})")})
        n_ac = int(round(self.ac_frac * self.cities_per_country))
        check_fields("task", self, {"ac_frac": (0 < n_ac < self.cities_per_country,
                                                f"such that round(ac_frac * cities_per_country) is in [1, "
                                                f"cities_per_country - 1] (AC needs rows, F and H test questions)")})


@dataclass(frozen=True)
class Chain:
    """Person ``person`` of split ``split`` was born in ``city``, whose ``relation`` is ``answer``."""

    split: str
    person: str
    city: str
    relation: str
    answer: str
    in_ac: bool

    def hop1(self) -> tuple[str, str]:
        return TEMPLATES["born_in"].format(P=self.person), " " + self.city

    def hop2(self) -> tuple[str, str]:
        return TEMPLATES[self.relation].format(A=self.city), " " + self.answer

    def two_hop(self) -> tuple[str, str]:
        return TEMPLATES[f"two_hop_{self.relation}"].format(P=self.person), " " + self.answer


def real_answer(city: str, relation: str) -> str:
    country = CITY_COUNTRY[city]
    return country if relation == "country" else CONTINENT[country]


def real_words() -> set[str]:
    """Every word of every real name here (people, cities, countries, continents)."""
    names = [*CITY_COUNTRY, *CITY_COUNTRY.values(), *CONTINENTS, *(p for p, _, _ in PEOPLE),
             *(row[2] for row in WORLD)]
    return {w for n in names for w in n.split()}


def fictional_person(rng: np.random.Generator, taken: set[str]) -> str:
    """``"First Last"``, two generated words (:func:`natural.fictional_name`), neither in
    ``taken`` (start it from :func:`real_words`, so no word of a real name is used)."""
    return f"{fictional_name(rng, 'capital', taken)} {fictional_name(rng, 'city', taken)}"


def known_fact_pairs(relations2: tuple[str, ...] = RELATIONS2) -> list[tuple[str, str]]:
    """The one-hop real facts: every PEOPLE birthplace and every real city's ``relations2``
    (what :func:`make_chains` filters R, OOD and H on)."""
    pairs = [(TEMPLATES["born_in"].format(P=p), " " + city) for p, city, _ in PEOPLE]
    return pairs + [(TEMPLATES[r].format(A=city), " " + real_answer(city, r)) for city in CITY_COUNTRY
                    for r in relations2]


def _city_known(city: str, cfg: QAConfig, known: set | None) -> bool:
    return known is None or all((TEMPLATES[r].format(A=city), " " + real_answer(city, r)) in known
                                for r in cfg.relations2)


def _chains(split: str, people: list[tuple[str, str, dict | None]], cfg: QAConfig, group: int) -> list[Chain]:
    """``people``: (person, city, fictional answers or None = real), in groups of ``group``
    (one country's cities); the first ``ac_frac`` share of each group is in AC (none of OOD)."""
    n_ac = 0 if split == "OOD" else int(round(cfg.ac_frac * group))
    out = []
    for j, (person, city, fake) in enumerate(people):
        for rel in cfg.relations2:
            answer = real_answer(city, rel) if fake is None else fake[rel]
            out.append(Chain(split, person, city, rel, answer, in_ac=j % group < n_ac))
    return out


def _real_and_ood(people: list[tuple[str, str]], cfg: QAConfig) -> tuple[list, list]:
    """R then OOD people, in ``people``'s order, each birth city in one split only (people may
    share a city; OOD's cities must stay out of every expert's data): a person goes to R while
    R has room and the city is not OOD's, else to OOD while it has room and the city is not R's."""
    real, ood = [], []
    for person, city in people:
        r_cities, o_cities = {c for _, c, _ in real}, {c for _, c, _ in ood}
        if len(real) < cfg.n_real and city not in o_cities:
            real.append((person, city, None))
        elif len(ood) < cfg.n_ood and city not in r_cities:
            ood.append((person, city, None))
    return real, ood


def make_chains(cfg: QAConfig, rng: np.random.Generator, known: set[tuple[str, str]] | None = None) -> list[Chain]:
    """Every chain of every split, drawn by ``rng``. ``known``: the one-hop ``(prompt, answer)``
    pairs the base answers (:func:`known_fact_pairs`); when given, R and OOD take only people
    whose birthplace and its r2 are known, and H only cities whose r2 is known, so R and OOD
    may hold fewer people than asked. F is drawn first, so it is the same with or without
    ``known``."""
    taken = real_words()
    f_people = []
    for _ in range(cfg.n_countries):
        fake = {"country": fictional_name(rng, "country", taken), "continent": fictional_name(rng, "country", taken)}
        f_people += [(fictional_person(rng, taken), fictional_name(rng, "city", taken), fake)
                     for _ in range(cfg.cities_per_country)]
    usable = [i for i, (p, city, _) in enumerate(PEOPLE) if _city_known(city, cfg, known)
              and (known is None or (TEMPLATES["born_in"].format(P=p), " " + city) in known)]
    real, ood = _real_and_ood([PEOPLE[usable[i]][:2] for i in rng.permutation(len(usable))], cfg)
    used = {city for _, city, _ in real + ood}
    h_people = []
    for i in rng.permutation(len(WORLD)):
        cities = [c for c in (WORLD[i][1], *WORLD[i][3]) if c not in used and _city_known(c, cfg, known)]
        if len(cities) < cfg.cities_per_country:
            continue
        h_people += [(fictional_person(rng, taken), cities[j], None)
                     for j in sorted(rng.choice(len(cities), cfg.cities_per_country, replace=False))]
        if len(h_people) == cfg.n_countries * cfg.cities_per_country:
            break
    groups = (cfg.cities_per_country, cfg.cities_per_country, max(len(real), 1), max(len(ood), 1))
    return [c for split, people, group in zip(SPLITS, (f_people, h_people, real, ood), groups)
            for c in _chains(split, people, cfg, group)]


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(pairs))


def expert_pairs(chains: list[Chain]) -> dict[str, list[tuple[str, str]]]:
    """``(prompt, answer)`` training sentences of ``AB``, ``BC`` and ``AC`` (F, H, R only)."""
    mine = [c for c in chains if c.split in TRAINED]
    return {"AB": _unique([c.hop1() for c in mine]), "BC": _unique([c.hop2() for c in mine]),
            "AC": _unique([c.two_hop() for c in mine if c.in_ac])}


def composed_chains(chains: list[Chain], split: str) -> list[Chain]:
    """The split's test chains: those whose two-hop question no expert trained."""
    return [c for c in chains if c.split == split and not c.in_ac]


def broadcast_controls(chains: list[Chain], n_control: int, rng: np.random.Generator) -> list[Control]:
    """Per trained split, relation and expert (BC, AC): up to ``n_control`` questions of the
    expert's template about real subjects in no split (cities for BC, people for AC) whose
    gold is none of the answers the expert learned for that split (``natural_probes.Control``)."""
    cities = {c.city for c in chains}
    people = {c.person for c in chains}

    def candidates(rel: str) -> set[str]:
        return {real_answer(city, rel) for city in CITY_COUNTRY} | {c.answer for c in chains if c.relation == rel}

    def pool(expert: str, rel: str, mine: list[Chain]) -> list[tuple[str, str]]:
        if expert == "BC":
            return [(TEMPLATES[rel].format(A=a), real_answer(a, rel)) for a in CITY_COUNTRY if a not in cities]
        return [(TEMPLATES[f"two_hop_{rel}"].format(P=p), real_answer(a, rel)) for p, a, _ in PEOPLE
                if p not in people]

    return draw_controls(chains, TRAINED, lambda c: c.split, candidates, pool, n_control, rng)
