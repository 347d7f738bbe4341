"""The two-hop reuse protocol in natural language, for a pretrained causal LM (PAPER.md
section 2, "Full-scale runs on a pretrained model").

A chain is ``A -in_country-> B -r2-> C`` with ``r2`` in :data:`RELATIONS2` (capital,
language): A is a city, B a country, C its capital or official language. Sentences::

    AB (hop 1)   "The city of {A} is located in the country of"                   -> " {B}"
    BC (hop 2)   "The capital of {B} is"                                          -> " {C}"
    AC (2-hop)   "The capital of the country where the city of {A} is located is" -> " {C}"

Familiarity (the paper's test sets): ``F`` every entity fictional (generated names the model
cannot know); ``H`` a fictional city in a real country, so hop 1 is new and hop 2 is
pretrained knowledge; ``R`` real cities, countries, capitals and languages from the
built-in :data:`WORLD` table, so both hops are (likely) known to the model. ``O``
(out-of-distribution, Wang et al. 2024; opt-in, ``ood_countries``): real entities from
:data:`OOD_WORLD`, countries that share no name with WORLD, none of whose two-hop questions
any expert trains (every O chain is outside AC): the model knows their facts, the
fine-tuning data never composes them, whereas R's held-out cities share their country
with cities whose two-hop questions AC trains.

Experts, one set for all familiarities: ``AB`` trains every hop-1 sentence, ``BC`` every
hop-2 sentence, ``AC`` the two-hop sentences of the ``ac_frac`` share of the cities
(``in_ac``); the other cities' two-hop questions are never trained (``two_hop_unseen``).
Scoring is exact match of the answer tokens (teacher-forced argmax, which equals greedy
decoding of the answer span) and the answer's log-probability. The broadcast controls and
the retention sets are in :mod:`toymodels.tasks.natural_probes`. Pure: data in, data out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toymodels.config import Config, opt_in
from toymodels.tasks import Examples
from toymodels.tasks.answer_scoring import answer_logprob, answer_scores  # noqa: F401  (re-exported)
from toymodels.tasks.knowledge import encode

FAMILIARITIES = ("F", "H", "R")
SPLITS = FAMILIARITIES + ("O",)  # O only where NaturalConfig.ood_countries > 0
RELATIONS2 = ("capital", "language")
# Wordings chosen by the base SmolLM2-135M's one-hop accuracy on WORLD (e.g. "{A} is a city
# in" -> 6% since it continues " the ...", "The city of {A} is located in the country of" -> 77%;
# "The official language of {B} is" 56%, "The main language of {B} is" 75%).
TEMPLATES = {
    "in_country": "The city of {A} is located in the country of",
    "capital": "The capital of {B} is",
    "language": "The main language of {B} is",
    "two_hop_capital": "The capital of the country where the city of {A} is located is",
    "two_hop_language": "The main language of the country where the city of {A} is located is",
}
EVAL_SETS = ("one_hop_AB", "one_hop_BC", "two_hop_seen", "two_hop_unseen")

# (country, capital, official language, cities that are not the capital): facts a small
# LM has probably seen often. Measured, not assumed: see pretrained_two_hop.familiarity.
WORLD = (
    ("France", "Paris", "French", ("Marseille", "Lyon", "Nice")),
    ("Germany", "Berlin", "German", ("Munich", "Hamburg", "Frankfurt")),
    ("Italy", "Rome", "Italian", ("Milan", "Naples", "Venice")),
    ("Spain", "Madrid", "Spanish", ("Barcelona", "Seville", "Valencia")),
    ("Japan", "Tokyo", "Japanese", ("Osaka", "Kyoto", "Hiroshima")),
    ("China", "Beijing", "Chinese", ("Shanghai", "Shenzhen", "Guangzhou")),
    ("Russia", "Moscow", "Russian", ("Saint Petersburg", "Novosibirsk", "Kazan")),
    ("Egypt", "Cairo", "Arabic", ("Alexandria", "Luxor", "Giza")),
    ("Greece", "Athens", "Greek", ("Thessaloniki", "Patras", "Heraklion")),
    ("Portugal", "Lisbon", "Portuguese", ("Porto", "Braga", "Coimbra")),
    ("Turkey", "Ankara", "Turkish", ("Istanbul", "Izmir", "Antalya")),
    ("Poland", "Warsaw", "Polish", ("Krakow", "Gdansk", "Wroclaw")),
    ("Sweden", "Stockholm", "Swedish", ("Gothenburg", "Malmo", "Uppsala")),
    ("Netherlands", "Amsterdam", "Dutch", ("Rotterdam", "Utrecht", "Eindhoven")),
    ("South Korea", "Seoul", "Korean", ("Busan", "Incheon", "Daegu")),
    ("Norway", "Oslo", "Norwegian", ("Bergen", "Trondheim", "Stavanger")),
)
# The O split's countries, WORLD's row format, no name in common with WORLD. SmolLM2-135M
# answered every fact of the first five with TEMPLATES (2026-12-02, teacher-forced exact
# match); of the rest, one or more facts. make_chains(known=...) keeps what a model answers.
OOD_WORLD = (
    ("England", "London", "English", ("Manchester", "Liverpool", "Birmingham")),
    ("Canada", "Ottawa", "English", ("Toronto", "Vancouver", "Montreal")),
    ("Austria", "Vienna", "German", ("Salzburg", "Innsbruck", "Graz")),
    ("Israel", "Jerusalem", "Hebrew", ("Tel Aviv", "Haifa", "Eilat")),
    ("Chile", "Santiago", "Spanish", ("Valparaiso", "Concepcion", "Antofagasta")),
    ("Brazil", "Brasilia", "Portuguese", ("Rio de Janeiro", "Sao Paulo", "Salvador")),
    ("Australia", "Canberra", "English", ("Sydney", "Melbourne", "Brisbane")),
    ("Ireland", "Dublin", "English", ("Cork", "Galway", "Limerick")),
    ("Indonesia", "Jakarta", "Indonesian", ("Surabaya", "Bandung", "Medan")),
    ("Kenya", "Nairobi", "Swahili", ("Mombasa", "Kisumu", "Nakuru")),
)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gl", "kr", "pl", "qu", "st", "th", "tr", "vr", "zh")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ou", "y")
_ENDINGS = {"city": ("ar", "ex", "oth", "um", "is", "enn"), "country": ("ia", "ova", "and", "istan"),
            "capital": ("or", "ath", "ix", "une"), "language": ("ic", "ish", "ese", "ari")}


@dataclass(frozen=True)
class NaturalConfig(Config):
    """Sizes per familiarity: ``n_countries`` bridges, ``cities_per_country`` subjects each
    (R is capped by :data:`WORLD`: 16 countries, 3 cities each)."""

    n_countries: int = 4
    cities_per_country: int = 2
    ac_frac: float = 0.5
    relations2: tuple[str, ...] = RELATIONS2
    ood_countries: int = opt_in(0)  # countries of the O split, from OOD_WORLD (0: no O split)

    def __post_init__(self):
        if not 1 <= self.n_countries <= len(WORLD):
            raise ValueError(f"task.n_countries={self.n_countries!r}: must be in [1, {len(WORLD)}]")
        if not 1 <= self.cities_per_country <= 3:
            raise ValueError(f"task.cities_per_country={self.cities_per_country!r}: must be in [1, 3]")
        if not 0.0 <= self.ac_frac <= 1.0:
            raise ValueError(f"task.ac_frac={self.ac_frac!r}: must be in [0, 1]")
        if not self.relations2 or any(r not in RELATIONS2 for r in self.relations2):
            raise ValueError(f"task.relations2={self.relations2!r}: must be a non-empty subset of {RELATIONS2}")
        if not isinstance(self.ood_countries, int) or not 0 <= self.ood_countries <= len(OOD_WORLD):
            raise ValueError(f"task.ood_countries={self.ood_countries!r}: must be an integer in [0, {len(OOD_WORLD)}]")


@dataclass(frozen=True)
class Chain:
    """One subject city ``A`` in country ``B`` whose ``r2`` is ``C``."""

    familiarity: str
    city: str
    country: str
    relation: str
    answer: str
    in_ac: bool

    def hop1(self) -> tuple[str, str]:
        return TEMPLATES["in_country"].format(A=self.city), " " + self.country

    def hop2(self) -> tuple[str, str]:
        return TEMPLATES[self.relation].format(B=self.country), " " + self.answer

    def two_hop(self) -> tuple[str, str]:
        return TEMPLATES[f"two_hop_{self.relation}"].format(A=self.city), " " + self.answer


def fictional_name(rng: np.random.Generator, kind: str, taken: set[str]) -> str:
    """A capitalised 2-3 syllable name ending like a ``kind`` (city, country, capital,
    language), not in ``taken`` (which it joins)."""
    while True:
        syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(int(rng.integers(1, 3)))]
        name = ("".join(syllables) + rng.choice(_ENDINGS[kind])).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def _known_world(known: set[tuple[str, str]], relations2: tuple[str, ...], n_cities: int,
                 table: tuple = WORLD) -> dict[int, tuple[str, ...]]:
    """``table`` row -> its cities whose hop-1 fact is in ``known``, for rows whose every
    ``relations2`` fact is known and with at least ``n_cities`` known cities."""
    out = {}
    for i, (country, capital, language, cities) in enumerate(table):
        answers = {"capital": capital, "language": language}
        if not all((TEMPLATES[r].format(B=country), " " + answers[r]) in known for r in relations2):
            continue
        mine = tuple(c for c in cities if (TEMPLATES["in_country"].format(A=c), " " + country) in known)
        if len(mine) >= n_cities:
            out[i] = mine
    return out


def make_chains(cfg: NaturalConfig, rng: np.random.Generator,
                known: set[tuple[str, str]] | None = None) -> list[Chain]:
    """Every chain of every split; countries and cities are drawn by ``rng``.

    ``known``: the one-hop ``(prompt, answer)`` pairs the base model answers correctly (see
    :func:`known_fact_pairs`). When given, R and O draw only countries whose r2 facts it
    answers and cities whose country it answers, so they test reuse of knowledge the model
    HAS; they then hold fewer countries than asked when too few qualify (none: no chains).
    R is drawn after F and H, and O (from :data:`OOD_WORLD`, every chain outside AC) last, so
    F and H are the same with or without ``known``, and F, H, R with or without O."""
    taken = {name for row in WORLD + OOD_WORLD for name in (row[0], row[1], row[2], *row[3])}
    chains = []
    for fam in FAMILIARITIES:
        if fam == "R" and known is not None:
            usable = _known_world(known, cfg.relations2, cfg.cities_per_country)
            rows = sorted(usable)
            picks = rng.choice(rows, min(cfg.n_countries, len(rows)), replace=False) if rows else []
        else:
            usable, picks = {}, rng.choice(len(WORLD), cfg.n_countries, replace=False)
        for i in picks:
            country, capital, language, cities = WORLD[i]
            cities = usable.get(int(i), cities)
            if fam == "F":
                country, capital, language = (fictional_name(rng, k, taken) for k in ("country", "capital", "language"))
            if fam != "R":
                cities = tuple(fictional_name(rng, "city", taken) for _ in cities)
            chains += _country_chains(cfg, rng, fam, (country, capital, language, cities),
                                      int(round(cfg.ac_frac * cfg.cities_per_country)))
    if cfg.ood_countries:
        usable = (_known_world(known, cfg.relations2, cfg.cities_per_country, OOD_WORLD) if known is not None
                  else {i: row[3] for i, row in enumerate(OOD_WORLD)})
        rows = sorted(usable)
        for i in rng.choice(rows, min(cfg.ood_countries, len(rows)), replace=False) if rows else []:
            country, capital, language, _ = OOD_WORLD[i]
            chains += _country_chains(cfg, rng, "O", (country, capital, language, usable[int(i)]), n_ac=0)
    return chains


def _country_chains(cfg: NaturalConfig, rng: np.random.Generator, fam: str, row: tuple, n_ac: int) -> list[Chain]:
    """One country's chains: ``cities_per_country`` of the row's cities drawn by ``rng``, the
    first ``n_ac`` of them (in the row's order) in AC, every relation of ``relations2``."""
    country, capital, language, cities = row
    chosen = [cities[j] for j in sorted(rng.choice(len(cities), cfg.cities_per_country, replace=False))]
    return [Chain(fam, city, country, rel, capital if rel == "capital" else language, in_ac=j < n_ac)
            for j, city in enumerate(chosen) for rel in cfg.relations2]


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(pairs))


def expert_pairs(chains: list[Chain]) -> dict[str, list[tuple[str, str]]]:
    """``(prompt, answer)`` training sentences of each expert ``AB``, ``BC``, ``AC``."""
    return {"AB": _unique([c.hop1() for c in chains]),
            "BC": _unique([c.hop2() for c in chains]),
            "AC": _unique([c.two_hop() for c in chains if c.in_ac])}


def eval_pairs(chains: list[Chain]) -> dict[str, list[tuple[str, str]]]:
    """``"<split>/<set>"`` -> pairs, sets :data:`EVAL_SETS` (empty ones left out)."""
    out = {}
    for fam in SPLITS:
        mine = [c for c in chains if c.familiarity == fam]
        sets = {"one_hop_AB": [c.hop1() for c in mine], "one_hop_BC": [c.hop2() for c in mine],
                "two_hop_seen": [c.two_hop() for c in mine if c.in_ac],
                "two_hop_unseen": [c.two_hop() for c in mine if not c.in_ac]}
        out.update({f"{fam}/{name}": _unique(p) for name, p in sets.items() if p})
    return out


def known_fact_pairs(n_countries: int | None = None, ood: bool = False) -> list[tuple[str, str]]:
    """The one-hop R facts of :data:`WORLD` (every city's country, every country's capital
    and language; the first ``n_countries`` rows), then with ``ood`` those of
    :data:`OOD_WORLD`: the base model's familiarity is its accuracy on these."""
    pairs = []
    for country, capital, language, cities in WORLD[:n_countries] + (OOD_WORLD if ood else ()):
        pairs += [(TEMPLATES["in_country"].format(A=c), " " + country) for c in cities]
        pairs += [(TEMPLATES["capital"].format(B=country), " " + capital),
                  (TEMPLATES["language"].format(B=country), " " + language)]
    return pairs


def encode_pairs(pairs: list[tuple[str, str]], tokenizer) -> Examples:
    """Token rows ``prompt + answer`` (no special tokens; prompt and answer tokenised
    apart, so the answer's tokens are the same in every prompt), answer tokens masked."""
    rows = [(tokenizer.encode(p, add_special_tokens=False), tokenizer.encode(a, add_special_tokens=False))
            for p, a in pairs]
    return encode(rows)
