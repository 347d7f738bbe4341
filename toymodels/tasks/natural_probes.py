"""Question sets of the natural-language protocol beyond its chains
(:mod:`toymodels.tasks.natural`): the retention sets (what fine-tuning should leave alone:
the base model's own facts and two-hop chains that no expert trains) and the broadcast
controls (T2 in natural language: the experts' new answers asked of other real subjects).
Pure: data in, data out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from toymodels.tasks.natural import (OOD_WORLD, SPLITS, TEMPLATES, WORLD, Chain, expert_pairs,
                                     known_fact_pairs)

RETENTION_SETS = ("retain/facts", "retain/chains")


def retention_pairs(chains: list[Chain], known: set[tuple[str, str]], relations2: tuple[str, ...], n: int,
                    rng: np.random.Generator) -> dict[str, list[tuple[str, str]]]:
    """What fine-tuning should leave alone, up to ``n`` rows each, drawn by ``rng``:
    ``retain/facts``, one-hop facts of WORLD and OOD_WORLD the base answers (``known``) and no
    expert trains; ``retain/chains``, two-hop questions (``relations2``) about cities of
    those tables whose country is in no chain (no expert trains any of its facts) and whose
    two hops the base answers: the base's own composition, which a merge should keep."""
    trained = {p for ps in expert_pairs(chains).values() for p, _ in ps}
    facts = [pair for pair in known_fact_pairs(ood=True) if pair in known and pair[0] not in trained]
    used = {c.country for c in chains}
    composed = []
    for country, capital, language, cities in WORLD + OOD_WORLD:
        answers = {"capital": capital, "language": language}
        if country in used:
            continue
        for city in cities:
            for rel in relations2:
                hops = ((TEMPLATES["in_country"].format(A=city), " " + country),
                        (TEMPLATES[rel].format(B=country), " " + answers[rel]))
                if all(h in known for h in hops):
                    composed.append((TEMPLATES[f"two_hop_{rel}"].format(A=city), " " + answers[rel]))
    return {name: [rows[i] for i in sorted(rng.permutation(len(rows))[:n])]
            for name, rows in zip(RETENTION_SETS, (facts, composed)) if rows}


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


def draw_controls(chains: Sequence, splits: Sequence[str], split_of: Callable[[Any], str],
                  candidates: Callable[[str], set[str]],
                  pool: Callable[[str, str, list], list[tuple[str, str]]],
                  n_control: int, rng: np.random.Generator) -> list[Control]:
    """The broadcast controls of a two-hop protocol: per relation, split and expert (BC: every
    chain of the split, AC: those in AC) that learned new answers, up to ``n_control``
    (question, gold) of ``pool(expert, relation, the split's chains of that relation)`` whose
    gold is none of them, drawn by ``rng``. ``candidates(relation)``: the relation's distinct
    answers (the chance reference). Chains have ``relation``, ``answer`` and ``in_ac``."""
    out = []
    for rel in dict.fromkeys(c.relation for c in chains):
        n_candidates = len(candidates(rel))
        for split in splits:
            mine = [c for c in chains if split_of(c) == split and c.relation == rel]
            for expert, trained in (("BC", mine), ("AC", [c for c in mine if c.in_ac])):
                new = tuple(sorted({c.answer for c in trained}))
                if not new:
                    continue
                options = [(q, gold) for q, gold in pool(expert, rel, mine) if gold not in new]
                picked = [options[i] for i in rng.permutation(len(options))[:n_control]]
                if picked:
                    out.append(Control(split, expert, rel, tuple(q for q, _ in picked), tuple(g for _, g in picked),
                                       new, n_candidates))
    return out


def broadcast_controls(chains: list[Chain], n_control: int, rng: np.random.Generator) -> list[Control]:
    """Per familiarity, relation and expert (BC, AC): up to ``n_control`` control questions
    about WORLD countries (BC) or WORLD cities (AC) drawn by ``rng`` (see :class:`Control`)."""
    def candidates(rel: str) -> set[str]:
        return {_world_answer(row, rel) for row in WORLD} | {c.answer for c in chains if c.relation == rel}

    def pool(expert: str, rel: str, mine: list[Chain]) -> list[tuple[str, str]]:
        if expert == "BC":
            return [(TEMPLATES[rel].format(B=row[0]), _world_answer(row, rel)) for row in WORLD
                    if row[0] not in {c.country for c in mine}]
        return [(TEMPLATES[f"two_hop_{rel}"].format(A=city), _world_answer(row, rel)) for row in WORLD
                for city in row[3] if city not in {c.city for c in mine}]

    return draw_controls(chains, SPLITS, lambda c: c.familiarity, candidates, pool, n_control, rng)


def readiness_prompts(chains: list[Chain]) -> dict:
    """What ``lora-limits diagnose`` reads the hop-2 expert (BC) with (PAPER.md, "A mechanism
    that predicts reuse"): ``{"adapter": "BC", "pairs", "controls"}``. Per chain a pair: its
    two-hop question ``prompt`` ("... the country where the city of A is located is") and the
    BC sentence of its own bridge ``expert_prompt`` ("The capital of B is"), in ``group``
    "<split>/<relation>": BC's edit reaches the composed question only as far as the question's
    keys overlap those of its own bridge's sentence more than those of the group's other
    bridges. ``controls``: the hop-1 sentences, which BC should not act on."""
    pairs = [{"group": f"{c.familiarity}/{c.relation}", "prompt": c.two_hop()[0], "expert_prompt": c.hop2()[0],
              "in_ac": c.in_ac} for c in chains]
    return {"adapter": "BC", "pairs": pairs, "controls": list(dict.fromkeys(c.hop1()[0] for c in chains))}
