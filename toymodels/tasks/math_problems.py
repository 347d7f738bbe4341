"""Toy math word problems: a digit tokenizer, question types and seeded problems (issue 10 item 2;
PAPER.md, "Task families of the journal version").

A *world* holds entities with integer attributes (``price e3 = 7``) and question types. A question
type is a left-folded arithmetic program over *leaves*: a fact ``attribute(entity in slot s)`` or a
constant written in the question; e.g. ``price(slot 0) * const 0 + count(slot 0)`` is two steps.
Leaf 0 is always a fact about slot 0, so every question needs at least one fact.

Entities come in three disjoint pools (entity indices; tokens ``e* c* n*``):

- familiar ``e*``: fixed attribute values that the pretraining corpus teaches;
- context ``c*``: no fixed values: every problem about them states the values it needs in its
  text, so a model must read them (the procedure adapter trains on these);
- new ``n*``: fixed values never seen in pretraining (the facts adapter and distractors learn them).

Question types split into familiar ``q*`` (pretraining) and new ``u*`` (the procedure adapter).

Token layout (``answer`` = the positions loss and exact match score, EOS included)::

    fact sentence     attr ent = v ;                       (in the text, and as a worked lookup line)
    problem           BOS [fact sentences] qtype ent.. [k , k ..] ?
      direct answer   v EOS
      worked answer   [attr ent = v ;]..  [a op b = r ;]..  ANS v EOS
    atomic fact       BOS ent attr        -> v EOS         (the "different" facts template)
    arithmetic drill  BOS a op b =        -> r EOS

Numbers are written in decimal, one token per digit. The worked lookup line and the fact sentence
are the same tokens by design: that is the solution template the two adapters may share.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from toymodels.config import Config, check_fields, counts
from toymodels.tasks.knowledge import BOS, EOS, SPECIALS

SYMBOLS = tuple("0123456789") + ("+", "-", "*", "=", ";", ",", "?", "ANS")
ATTRIBUTES = ("price", "count", "distance", "weight", "age", "speed")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
Format = Literal["direct", "worked"]
FORMATS: tuple[str, ...] = ("direct", "worked")
Leaf = tuple[str, int, int]  # ("fact", attribute, slot) or ("const", index, 0)
Fact = tuple[int, int, int]  # (entity, attribute, value)
MIN_FEASIBLE = 0.25  # question types valid on fewer random draws are redrawn


@dataclass(frozen=True)
class MathWorldConfig(Config):
    """Sizes of the world. Facts and constants lie in ``[1, max_fact]``; every intermediate and
    final result must lie in ``[0, max_value]`` (problems are redrawn until they do)."""

    n_entities: int = 20
    n_context: int = 12
    n_new: int = 16
    n_attributes: int = 3
    n_qtypes: int = 6
    n_new_qtypes: int = 3
    min_steps: int = 1
    max_steps: int = 2
    max_entities: int = 2
    max_fact: int = 9
    max_value: int = 99

    def __post_init__(self):
        check_fields("world", self, counts(self, {"n_entities": 2, "n_context": 2, "n_new": 2, "n_attributes": 1,
                                                  "n_qtypes": 1, "n_new_qtypes": 1, "min_steps": 1, "max_steps": 1,
                                                  "max_entities": 1, "max_fact": 2, "max_value": 2}))
        check_fields("world", self, {
            "n_attributes": (self.n_attributes <= len(ATTRIBUTES), f"<= {len(ATTRIBUTES)}"),
            "n_qtypes": (self.n_qtypes >= self.n_attributes, ">= n_attributes (each attribute leads one)"),
            "min_steps": (self.min_steps <= self.max_steps, "<= max_steps"), "max_steps": (self.max_steps <= 3, "<= 3"),
            "max_entities": (self.max_entities <= 2, "1 or 2"), "max_fact": (self.max_fact <= self.max_value,
                                                                              "<= max_value")})


@dataclass(frozen=True)
class MathTokenizer:
    """Ids: ``PAD BOS EOS | 0-9 + - * = ; , ? ANS | attributes | q* u* | e* c* n*``."""

    n_attributes: int
    n_qtypes: int
    n_new_qtypes: int
    n_entities: int
    n_context: int
    n_new: int

    def symbol(self, s: str) -> int:
        return len(SPECIALS) + SYMBOLS.index(s)

    def number(self, v: int) -> list[int]:
        if v < 0:
            raise ValueError(f"number {v}: must be >= 0 (problems keep every value non-negative)")
        return [self.symbol(d) for d in str(int(v))]

    def attribute(self, a: int) -> int:
        return len(SPECIALS) + len(SYMBOLS) + a

    def qtype(self, q: int) -> int:
        return self.attribute(self.n_attributes) + q

    def entity(self, e: int) -> int:
        return self.qtype(self.n_qtypes + self.n_new_qtypes) + e

    @property
    def d_vocab(self) -> int:
        return self.entity(self.n_entities + self.n_context + self.n_new)

    @property
    def digits(self) -> range:
        return range(self.symbol("0"), self.symbol("9") + 1)

    def entity_name(self, e: int) -> str:
        for prefix, size in (("e", self.n_entities), ("c", self.n_context), ("n", self.n_new)):
            if e < size:
                return f"{prefix}{e}"
            e -= size
        raise ValueError(f"entity {e}: out of range")

    def name(self, token: int) -> str:
        if token < len(SPECIALS):
            return SPECIALS[token]
        if token < self.attribute(0):
            return SYMBOLS[token - len(SPECIALS)]
        if token < self.qtype(0):
            return ATTRIBUTES[token - self.attribute(0)]
        if token < self.entity(0):
            q = token - self.qtype(0)
            return f"q{q}" if q < self.n_qtypes else f"u{q - self.n_qtypes}"
        return self.entity_name(token - self.entity(0))

    def decode(self, tokens) -> str:
        return " ".join(self.name(int(t)) for t in tokens if int(t) != SPECIALS.index("PAD"))


@dataclass(frozen=True)
class QuestionType:
    """``leaves[0] ops[0] leaves[1] ops[1] ...`` evaluated left to right (``len(ops)`` steps)."""

    leaves: tuple[Leaf, ...]
    ops: tuple[str, ...]

    @property
    def n_slots(self) -> int:
        return 1 + max(slot for kind, _, slot in self.leaves if kind == "fact")

    @property
    def n_consts(self) -> int:
        return sum(kind == "const" for kind, _, _ in self.leaves)

    @property
    def facts(self) -> list[tuple[int, int]]:
        """``(attribute, slot)`` of every fact leaf, in order of use (each appears once)."""
        return [(a, s) for kind, a, s in self.leaves if kind == "fact"]


@dataclass(frozen=True)
class Problem:
    """One question. ``facts``: what it needs, in lookup order; ``context``: the sentences its
    text states (given facts and distractors); ``steps``: ``(left, op, right, result)``;
    ``expression``: SymPy-parsable, over symbols ``<attribute>_<entity>`` (e.g. ``price_n3``)."""

    qtype: int
    entities: tuple[int, ...]
    consts: tuple[int, ...]
    facts: tuple[Fact, ...]
    context: tuple[Fact, ...]
    steps: tuple[tuple[int, str, int, int], ...]
    expression: str

    @property
    def answer(self) -> int:
        return self.steps[-1][3]


@dataclass(frozen=True)
class MathWorld:
    """``values[e, a]``: attribute ``a`` of familiar or new entity ``e`` (-1 for context entities)."""

    config: MathWorldConfig
    tokenizer: MathTokenizer
    values: np.ndarray
    qtypes: tuple[QuestionType, ...]

    @property
    def familiar(self) -> np.ndarray:
        return np.arange(self.config.n_entities)

    @property
    def context(self) -> np.ndarray:
        return self.config.n_entities + np.arange(self.config.n_context)

    @property
    def new(self) -> np.ndarray:
        return self.config.n_entities + self.config.n_context + np.arange(self.config.n_new)

    @property
    def familiar_qtypes(self) -> range:
        return range(self.config.n_qtypes)

    @property
    def new_qtypes(self) -> range:
        return range(self.config.n_qtypes, len(self.qtypes))

    def symbol(self, e: int, a: int) -> str:
        return f"{ATTRIBUTES[a]}_{self.tokenizer.entity_name(e)}"


def _draw_qtype(cfg: MathWorldConfig, lead: int, rng: np.random.Generator) -> QuestionType:
    leaves: list[Leaf] = [("fact", lead, 0)]
    for _ in range(int(rng.integers(cfg.min_steps, cfg.max_steps + 1))):
        free = [("fact", a, s) for a in range(cfg.n_attributes) for s in range(cfg.max_entities)
                if ("fact", a, s) not in leaves]
        const = ("const", sum(kind == "const" for kind, _, _ in leaves), 0)
        leaves.append(const if not free or rng.random() < 0.5 else free[int(rng.integers(len(free)))])
    return QuestionType(tuple(leaves), tuple(str(o) for o in rng.choice(list(OPS), len(leaves) - 1)))


def feasibility(qt: QuestionType, cfg: MathWorldConfig, rng: np.random.Generator, n: int = 200) -> float:
    """Share of uniform draws of facts and constants whose every result is in ``[0, max_value]``."""
    draw = lambda: int(rng.integers(1, cfg.max_fact + 1))  # noqa: E731
    return sum(solve(qt, {f: draw() for f in qt.facts}, tuple(draw() for _ in range(qt.n_consts)), cfg.max_value)
               is not None for _ in range(n)) / n


def make_world(cfg: MathWorldConfig, rng: np.random.Generator) -> MathWorld:
    """Distinct question types (type ``i`` leads with attribute ``i mod n_attributes``), each valid
    on at least ``MIN_FEASIBLE`` of random draws (so most entities can be asked it), and values."""
    qtypes: list[QuestionType] = []
    for i in range(cfg.n_qtypes + cfg.n_new_qtypes):
        for _ in range(1000):
            qt = _draw_qtype(cfg, i % cfg.n_attributes, rng)
            if qt not in qtypes and feasibility(qt, cfg, rng) >= MIN_FEASIBLE:
                break
        else:
            raise ValueError(f"world.n_qtypes + n_new_qtypes = {cfg.n_qtypes + cfg.n_new_qtypes}: could not draw "
                             f"that many distinct question types valid on >= {MIN_FEASIBLE:.0%} of draws; use fewer, "
                             f"fewer world.max_steps or a larger world.max_value")
        qtypes.append(qt)
    values = rng.integers(1, cfg.max_fact + 1, size=(cfg.n_entities + cfg.n_context + cfg.n_new, cfg.n_attributes))
    values[cfg.n_entities:cfg.n_entities + cfg.n_context] = -1
    tok = MathTokenizer(cfg.n_attributes, cfg.n_qtypes, cfg.n_new_qtypes, cfg.n_entities, cfg.n_context, cfg.n_new)
    return MathWorld(cfg, tok, values, tuple(qtypes))


def solve(qt: QuestionType, values: dict[tuple[int, int], int], consts: tuple[int, ...], max_value: int):
    """The steps ``(left, op, right, result)`` or None if a result leaves ``[0, max_value]``."""
    leaf = lambda kind, i, s: values[(i, s)] if kind == "fact" else consts[i]  # noqa: E731
    acc, steps = leaf(*qt.leaves[0]), []
    for op, right in zip(qt.ops, qt.leaves[1:]):
        result = OPS[op](acc, leaf(*right))
        if not 0 <= result <= max_value:
            return None
        steps.append((acc, op, leaf(*right), result))
        acc = result
    return tuple(steps)


def make_problem(world: MathWorld, q: int, entities: tuple[int, ...], rng: np.random.Generator,
                 given: bool, n_distractors: int = 0, consts: tuple[int, ...] | None = None,
                 tries: int = 100) -> Problem | None:
    """Question type ``q`` about ``entities`` (one per slot). ``given``: draw fresh values and state
    them in the text (context entities); else use the world's values and state nothing. Constants
    (unless given) are redrawn until every result is in range; None if no draw is."""
    cfg, qt = world.config, world.qtypes[q]
    if len(entities) != qt.n_slots:
        raise ValueError(f"question type {q} has {qt.n_slots} entity slots, got {len(entities)} entities")
    for _ in range(tries if given or consts is None else 1):
        vals = {(a, s): int(rng.integers(1, cfg.max_fact + 1)) if given else int(world.values[entities[s], a])
                for a, s in qt.facts}
        cs = consts if consts is not None else tuple(int(c) for c in rng.integers(1, cfg.max_fact + 1, qt.n_consts))
        steps = solve(qt, vals, cs, cfg.max_value)
        if steps is not None:
            break
        if not given and not qt.n_consts:
            return None  # nothing left to redraw
    else:
        return None
    facts = tuple((entities[s], a, vals[(a, s)]) for a, s in qt.facts)
    pool = [(int(e), a) for e in world.context if e not in entities for a in range(cfg.n_attributes)]
    picks = rng.choice(len(pool), min(n_distractors, len(pool)), replace=False)
    distractors = tuple((pool[i][0], pool[i][1], int(rng.integers(1, cfg.max_fact + 1))) for i in picks)
    stated = (facts if given else ()) + distractors
    context = tuple(stated[i] for i in rng.permutation(len(stated)))
    text = lambda kind, i, s: world.symbol(entities[s], i) if kind == "fact" else str(cs[i])  # noqa: E731
    expression = text(*qt.leaves[0])
    for op, right in zip(qt.ops, qt.leaves[1:]):
        expression = f"({expression} {op} {text(*right)})"
    return Problem(q, tuple(int(e) for e in entities), cs, facts, context, steps, expression)
