"""A seeded synthetic knowledge graph and its tokenizer (PAPER.md section 2, two-hop reuse).

The graph is functional: every familiar entity ``e`` and relation ``r`` has exactly one
object ``r(e)``, drawn uniformly from the familiar entities. A two-hop chain
``(e, r1, r2)`` answers ``r2(r1(e))`` through the bridge ``r1(e)``.

Vocabulary (one token per symbol; ids in this order)::

    PAD BOS EOS | r0 .. r{R-1} | e0 .. e{E-1} | n0 .. n{N-1}

``e*`` are the familiar entities (the only entities the pretraining corpus mentions);
``n*`` are reserved "new" entity tokens that never appear in pretraining, so a model
knows nothing about them but their random initial embedding (familiarity split F).

Sequence formats (``answer`` = the positions the loss and exact match score, EOS included)::

    atomic            BOS e  r      r(e)              EOS
    two-hop, latent   BOS e  r1 r2  r2(r1(e))         EOS
    two-hop, CoT      BOS e  r1 r2  r1(e) r2(r1(e))   EOS    (bridge, then answer)

There is deliberately no separator before the answer (as in Wang et al. 2024): the atomic
prompt ``BOS e r1`` is then the literal prefix of the two-hop prompt, so the position where
an atomic fact is recalled is the position where the first hop must happen. (Measured with
the PAPER.md recipe at lr 1e-3: 25% vs 22% on held-out latent chains after ~1,600 steps
without vs with a ``SEP`` token, so the choice does not explain slow latent composition.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from toymodels.config import Config, check_fields, counts
from toymodels.tasks import Examples

SPECIALS = ("PAD", "BOS", "EOS")
PAD, BOS, EOS = range(len(SPECIALS))
Format = Literal["latent", "cot"]
FORMATS: tuple[str, ...] = ("latent", "cot")


@dataclass(frozen=True)
class GraphConfig(Config):
    """Sizes of the knowledge graph and vocabulary. ``n_new`` reserved entity tokens are
    kept for fine-tuning facts about unseen entities."""

    n_entities: int = 100
    n_relations: int = 8
    n_new: int = 60

    def __post_init__(self):
        check_fields("graph", self, counts(self, {"n_entities": 2, "n_relations": 2, "n_new": 0}))

    @property
    def d_vocab(self) -> int:
        return len(SPECIALS) + self.n_relations + self.n_entities + self.n_new


@dataclass(frozen=True)
class Tokenizer:
    """Maps relation / familiar-entity / new-entity indices to token ids and back to names."""

    n_relations: int
    n_entities: int
    n_new: int

    @property
    def d_vocab(self) -> int:
        return len(SPECIALS) + self.n_relations + self.n_entities + self.n_new

    def relation(self, r: int) -> int:
        return len(SPECIALS) + r

    def entity(self, e: int) -> int:
        """Token of familiar entity ``e`` (``0 <= e < n_entities``)."""
        return len(SPECIALS) + self.n_relations + e

    def new_entity(self, n: int) -> int:
        """Token of reserved (never pretrained) entity ``n`` (``0 <= n < n_new``)."""
        return len(SPECIALS) + self.n_relations + self.n_entities + n

    @property
    def new_tokens(self) -> range:
        start = self.new_entity(0)
        return range(start, start + self.n_new)

    def name(self, token: int) -> str:
        specials, rel, fam = len(SPECIALS), self.relation(0), self.entity(0)
        if token < specials:
            return SPECIALS[token]
        if token < fam:
            return f"r{token - rel}"
        if token < self.new_entity(0):
            return f"e{token - fam}"
        return f"n{token - self.new_entity(0)}"

    def decode(self, tokens) -> str:
        return " ".join(self.name(int(t)) for t in tokens if int(t) != PAD)


@dataclass(frozen=True)
class KnowledgeGraph:
    """``objects[e, r] = r(e)`` over familiar entity indices, shape ``(n_entities, n_relations)``."""

    objects: np.ndarray
    tokenizer: Tokenizer

    @property
    def n_entities(self) -> int:
        return self.objects.shape[0]

    @property
    def n_relations(self) -> int:
        return self.objects.shape[1]

    def two_hop(self, e: int, r1: int, r2: int) -> tuple[int, int]:
        """``(bridge, answer) = (r1(e), r2(r1(e)))``."""
        bridge = int(self.objects[e, r1])
        return bridge, int(self.objects[bridge, r2])


def make_graph(cfg: GraphConfig, rng: np.random.Generator) -> KnowledgeGraph:
    objects = rng.integers(0, cfg.n_entities, size=(cfg.n_entities, cfg.n_relations))
    return KnowledgeGraph(objects, Tokenizer(cfg.n_relations, cfg.n_entities, cfg.n_new))


# A "row" is a question in token ids plus its answer token ids; the formatters below turn
# (subject token, relation indices, entity tokens) into rows, so that familiar and new
# entities share one code path.

def atomic_row(tok: Tokenizer, subject: int, r: int, obj: int) -> tuple[list[int], list[int]]:
    """``BOS subject r`` -> ``obj EOS`` (all entity arguments are token ids)."""
    return [BOS, subject, tok.relation(r)], [obj, EOS]


def two_hop_row(tok: Tokenizer, subject: int, r1: int, r2: int, bridge: int, answer: int,
                fmt: Format) -> tuple[list[int], list[int]]:
    """``BOS subject r1 r2`` -> ``answer EOS`` (latent) or ``bridge answer EOS`` (cot)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: must be one of {', '.join(FORMATS)}")
    question = [BOS, subject, tok.relation(r1), tok.relation(r2)]
    return question, ([answer, EOS] if fmt == "latent" else [bridge, answer, EOS])


def encode(rows: list[tuple[list[int], list[int]]]) -> Examples:
    """Right-pad rows to one length; the answer mask marks answer tokens (EOS included)."""
    if not rows:
        return Examples(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, dtype=torch.bool))
    length = max(len(q) + len(a) for q, a in rows)
    tokens = torch.full((len(rows), length), PAD, dtype=torch.long)  # (N, T)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)  # (N, T)
    for i, (q, a) in enumerate(rows):
        tokens[i, :len(q) + len(a)] = torch.tensor(q + a)
        mask[i, len(q):len(q) + len(a)] = True
    return Examples(tokens, mask)
