"""The pretraining corpus of the two-hop experiment (PAPER.md section 2; Wang et al. 2024).

The corpus holds every atomic fact ``(e, r) -> r(e)`` of the familiar entities plus
two-hop chains ``(e, r1, r2) -> r2(r1(e))`` in one answer format (latent or CoT, see
:mod:`toymodels.tasks.knowledge`). Chains split three ways, disjointly:

- ``train``: the chains in the corpus; their count is ``two_hop_ratio`` per atomic fact
  (``None``: every chain not held out). The ratio is the grokking knob of Wang et al.
- ``val_id`` / ``test_id``: a ``heldout_frac`` share of the in-distribution chains, never
  trained, halved: ``val_id`` for early stopping, ``test_id`` to report; the base model
  must answer ``test_id`` to count as "able to compose".
- ``test_ood``: every chain whose subject is one of the ``ood_frac`` out-of-distribution
  entities; their atomic facts are trained, their chains never.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toymodels.config import Config, check_fields, counts
from toymodels.tasks import Examples
from toymodels.tasks.knowledge import (FORMATS, Format, GraphConfig, KnowledgeGraph, atomic_row,
                                       encode, make_graph, two_hop_row)


@dataclass(frozen=True)
class TwoHopConfig(Config):
    graph: GraphConfig = field(default_factory=GraphConfig)
    fmt: Format = "latent"
    heldout_frac: float = 0.2
    ood_frac: float = 0.0
    two_hop_ratio: float | None = None
    n_eval: int = 512  # rows per eval set (a random subset where more exist)

    def __post_init__(self):
        check_fields("task", self, {
            "fmt": (self.fmt in FORMATS, f"one of {', '.join(FORMATS)}"),
            "heldout_frac": (0.0 < self.heldout_frac < 1.0, "in (0, 1)"),
            "ood_frac": (0.0 <= self.ood_frac < 1.0, "in [0, 1)"),
            "two_hop_ratio": (self.two_hop_ratio is None or self.two_hop_ratio >= 0, ">= 0 or None"),
        } | counts(self, {"n_eval": 1}))


@dataclass(frozen=True)
class Pretraining:
    """The corpus and its splits. Chain arrays are ``(n, 3)`` rows ``(e, r1, r2)`` of
    familiar entity / relation indices; ``ood_entities`` are entity indices."""

    config: TwoHopConfig
    graph: KnowledgeGraph
    train: Examples
    eval_sets: dict[str, Examples]
    train_chains: np.ndarray
    val_id_chains: np.ndarray
    test_id_chains: np.ndarray
    test_ood_chains: np.ndarray
    ood_entities: np.ndarray

    @property
    def id_entities(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.graph.n_entities), self.ood_entities)


def chain_rows(graph: KnowledgeGraph, chains: np.ndarray, fmt: Format) -> list:
    tok = graph.tokenizer
    rows = []
    for e, r1, r2 in chains:
        bridge, answer = graph.two_hop(e, r1, r2)
        rows.append(two_hop_row(tok, tok.entity(e), r1, r2, tok.entity(bridge), tok.entity(answer), fmt))
    return rows


def chain_examples(graph: KnowledgeGraph, chains: np.ndarray, fmt: Format) -> Examples:
    return encode(chain_rows(graph, chains, fmt))


def atomic_examples(graph: KnowledgeGraph, facts: np.ndarray) -> Examples:
    """``facts: (n, 2)`` rows ``(e, r)`` of familiar indices."""
    tok = graph.tokenizer
    return encode([atomic_row(tok, tok.entity(e), r, tok.entity(graph.objects[e, r])) for e, r in facts])


def _subset(rng: np.random.Generator, rows: np.ndarray, n: int) -> np.ndarray:
    return rows if len(rows) <= n else rows[np.sort(rng.choice(len(rows), n, replace=False))]


def make_pretraining(cfg: TwoHopConfig, rng: np.random.Generator) -> Pretraining:
    graph = make_graph(cfg.graph, rng)
    E, R = cfg.graph.n_entities, cfg.graph.n_relations
    ood = np.sort(rng.choice(E, int(round(cfg.ood_frac * E)), replace=False))
    grid = np.stack(np.meshgrid(np.arange(E), np.arange(R), np.arange(R), indexing="ij"), -1)
    chains = grid.reshape(-1, 3)  # (E * R * R, 3)
    is_ood = np.isin(chains[:, 0], ood)
    id_chains = chains[~is_ood][rng.permutation(int((~is_ood).sum()))]
    n_test = int(round(cfg.heldout_frac * len(id_chains)))
    val_id, test_id, pool = id_chains[:n_test:2], id_chains[1:n_test:2], id_chains[n_test:]
    facts = np.stack(np.meshgrid(np.arange(E), np.arange(R), indexing="ij"), -1).reshape(-1, 2)
    if cfg.two_hop_ratio is None:
        train_chains = pool
    else:
        n_train = int(round(cfg.two_hop_ratio * len(facts)))
        if n_train > len(pool):
            raise ValueError(f"task.two_hop_ratio={cfg.two_hop_ratio}: needs {n_train} training "
                             f"chains but only {len(pool)} exist; allowed <= {len(pool) / len(facts):.3g}")
        train_chains = pool[:n_train]
    atomic = atomic_examples(graph, facts)
    parts = [atomic] + ([chain_examples(graph, train_chains, cfg.fmt)] if len(train_chains) else [])
    eval_sets = {
        "atomic": atomic_examples(graph, _subset(rng, facts, cfg.n_eval)),
        "train_two_hop": chain_examples(graph, _subset(rng, train_chains, cfg.n_eval), cfg.fmt),
        "val_id": chain_examples(graph, _subset(rng, val_id, cfg.n_eval), cfg.fmt),
        "test_id": chain_examples(graph, _subset(rng, test_id, cfg.n_eval), cfg.fmt),
    }
    if len(ood):
        eval_sets["test_ood"] = chain_examples(graph, _subset(rng, chains[is_ood], cfg.n_eval), cfg.fmt)
    return Pretraining(cfg, graph, Examples.cat(parts), {k: v for k, v in eval_sets.items() if len(v)},
                       train_chains, val_id, test_id, chains[is_ood], ood)
