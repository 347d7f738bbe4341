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
built-in :data:`WORLD` table, so both hops are (likely) known to the model.

Experts, one set for all familiarities: ``AB`` trains every hop-1 sentence, ``BC`` every
hop-2 sentence, ``AC`` the two-hop sentences of the ``ac_frac`` share of the cities
(``in_ac``); the other cities' two-hop questions are never trained (``two_hop_unseen``).
Scoring is exact match of the answer tokens (teacher-forced argmax, which equals greedy
decoding of the answer span) and the answer's log-probability. Pure: data in, data out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toymodels.config import Config
from toymodels.tasks import Examples
from toymodels.tasks.answer_scoring import answer_logprob, answer_scores  # noqa: F401  (re-exported)
from toymodels.tasks.knowledge import encode

FAMILIARITIES = ("F", "H", "R")
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

    def __post_init__(self):
        if not 1 <= self.n_countries <= len(WORLD):
            raise ValueError(f"task.n_countries={self.n_countries!r}: must be in [1, {len(WORLD)}]")
        if not 1 <= self.cities_per_country <= 3:
            raise ValueError(f"task.cities_per_country={self.cities_per_country!r}: must be in [1, 3]")
        if not 0.0 <= self.ac_frac <= 1.0:
            raise ValueError(f"task.ac_frac={self.ac_frac!r}: must be in [0, 1]")
        if not self.relations2 or any(r not in RELATIONS2 for r in self.relations2):
            raise ValueError(f"task.relations2={self.relations2!r}: must be a non-empty subset of {RELATIONS2}")


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


def _known_world(known: set[tuple[str, str]], relations2: tuple[str, ...], n_cities: int) -> dict[int, tuple[str, ...]]:
    """``WORLD`` row -> its cities whose hop-1 fact is in ``known``, for rows whose every
    ``relations2`` fact is known and with at least ``n_cities`` known cities."""
    out = {}
    for i, (country, capital, language, cities) in enumerate(WORLD):
        answers = {"capital": capital, "language": language}
        if not all((TEMPLATES[r].format(B=country), " " + answers[r]) in known for r in relations2):
            continue
        mine = tuple(c for c in cities if (TEMPLATES["in_country"].format(A=c), " " + country) in known)
        if len(mine) >= n_cities:
            out[i] = mine
    return out


def make_chains(cfg: NaturalConfig, rng: np.random.Generator,
                known: set[tuple[str, str]] | None = None) -> list[Chain]:
    """Every chain of every familiarity; countries and cities are drawn by ``rng``.

    ``known``: the one-hop ``(prompt, answer)`` pairs the base model answers correctly (see
    :func:`known_fact_pairs`). When given, R draws only countries whose r2 facts it answers
    and cities whose country it answers, so R tests reuse of knowledge the model HAS; R then
    holds fewer than ``n_countries`` countries when too few qualify (none: no R chains).
    R is drawn last, so F and H are the same with or without ``known``."""
    taken = {name for row in WORLD for name in (row[0], row[1], row[2], *row[3])}
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
            chosen = [cities[j] for j in sorted(rng.choice(len(cities), cfg.cities_per_country, replace=False))]
            n_ac = int(round(cfg.ac_frac * len(chosen)))
            for j, city in enumerate(chosen):
                for rel in cfg.relations2:
                    chains.append(Chain(fam, city, country, rel, capital if rel == "capital" else language,
                                        in_ac=j < n_ac))
    return chains


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(pairs))


def expert_pairs(chains: list[Chain]) -> dict[str, list[tuple[str, str]]]:
    """``(prompt, answer)`` training sentences of each expert ``AB``, ``BC``, ``AC``."""
    return {"AB": _unique([c.hop1() for c in chains]),
            "BC": _unique([c.hop2() for c in chains]),
            "AC": _unique([c.two_hop() for c in chains if c.in_ac])}


def eval_pairs(chains: list[Chain]) -> dict[str, list[tuple[str, str]]]:
    """``"<familiarity>/<set>"`` -> pairs, sets :data:`EVAL_SETS` (empty ones left out)."""
    out = {}
    for fam in FAMILIARITIES:
        mine = [c for c in chains if c.familiarity == fam]
        sets = {"one_hop_AB": [c.hop1() for c in mine], "one_hop_BC": [c.hop2() for c in mine],
                "two_hop_seen": [c.two_hop() for c in mine if c.in_ac],
                "two_hop_unseen": [c.two_hop() for c in mine if not c.in_ac]}
        out.update({f"{fam}/{name}": _unique(p) for name, p in sets.items() if p})
    return out


def known_fact_pairs(n_countries: int | None = None) -> list[tuple[str, str]]:
    """The one-hop R facts of :data:`WORLD` (every city's country, every country's capital
    and language): the base model's familiarity is its accuracy on these."""
    pairs = []
    for country, capital, language, cities in WORLD[:n_countries]:
        pairs += [(TEMPLATES["in_country"].format(A=c), " " + country) for c in cities]
        pairs += [(TEMPLATES["capital"].format(B=country), " " + capital),
                  (TEMPLATES["language"].format(B=country), " " + language)]
    return pairs


# --- broadcast controls (T2 in natural language) -------------------------------------------

@dataclass(frozen=True)
class Control:
    """Questions of expert ``expert``'s template (``BC``: hop 2, ``AC``: two-hop) for relation
    ``relation`` about real subjects that are not in the ``familiarity`` split's chains and
    whose gold answer is not one of ``new_answers`` (the answers the expert learned for that
    split). An expert that broadcasts answers them with a new answer anyway. ``chance``:
    the rate of a model answering with a uniformly drawn name among the ``n_candidates``
    distinct answers of ``relation`` in this protocol (WORLD's and every chain's); with an
    open vocabulary it is a reference line, not a true floor."""

    familiarity: str
    expert: str
    relation: str
    questions: tuple[str, ...]
    golds: tuple[str, ...]
    new_answers: tuple[str, ...]
    n_candidates: int

    @property
    def name(self) -> str:
        return f"{self.familiarity}/{self.expert}/{self.relation}"

    @property
    def chance(self) -> float:
        return len(self.new_answers) / self.n_candidates

    def pairs(self) -> list[tuple[str, str]]:
        """Every (question, new answer): row ``q * len(new_answers) + a``."""
        return [(q, " " + a) for q in self.questions for a in self.new_answers]


def _world_answer(row: tuple, relation: str) -> str:
    return row[1] if relation == "capital" else row[2]


def broadcast_controls(chains: list[Chain], n_control: int, rng: np.random.Generator) -> list[Control]:
    """Per familiarity, relation and expert (BC, AC): up to ``n_control`` control questions
    about WORLD countries (BC) or WORLD cities (AC) drawn by ``rng`` (see :class:`Control`)."""
    out = []
    for rel in dict.fromkeys(c.relation for c in chains):
        candidates = {_world_answer(row, rel) for row in WORLD} | {c.answer for c in chains if c.relation == rel}
        for fam in FAMILIARITIES:
            mine = [c for c in chains if c.familiarity == fam and c.relation == rel]
            for expert, trained in (("BC", mine), ("AC", [c for c in mine if c.in_ac])):
                new = tuple(sorted({c.answer for c in trained}))
                if not new:
                    continue
                if expert == "BC":
                    pool = [(TEMPLATES[rel].format(B=row[0]), _world_answer(row, rel)) for row in WORLD
                            if row[0] not in {c.country for c in mine}]
                else:
                    pool = [(TEMPLATES[f"two_hop_{rel}"].format(A=city), _world_answer(row, rel)) for row in WORLD
                            for city in row[3] if city not in {c.city for c in mine}]
                pool = [(q, gold) for q, gold in pool if gold not in new]
                picked = [pool[i] for i in rng.permutation(len(pool))[:n_control]]
                if picked:
                    out.append(Control(fam, expert, rel, tuple(q for q, _ in picked), tuple(g for _, g in picked),
                                       new, len(candidates)))
    return out


def encode_pairs(pairs: list[tuple[str, str]], tokenizer) -> Examples:
    """Token rows ``prompt + answer`` (no special tokens; prompt and answer tokenised
    apart, so the answer's tokens are the same in every prompt), answer tokens masked."""
    rows = [(tokenizer.encode(p, add_special_tokens=False), tokenizer.encode(a, add_special_tokens=False))
            for p, a in pairs]
    return encode(rows)
