"""Fine-tuning sets of the two-hop reuse experiment (PAPER.md section 2).

New knowledge arrives in disjoint expert datasets, each a list of facts over one relation:

- ``AB``: new facts ``A_i -r1-> B_i``;   ``BC``: facts ``B_i -r2-> C_i``;
- ``AC``: the composed facts ``A_i r1 r2 -> C_i`` themselves (bridge ``B_i`` in CoT);
- ``D0, D1, ...``: distractors, new facts ``D_j -rd-> E_j`` on other entities and, where the
  graph has them, other relations.

The composed question ``A_i r1 r2 ?`` needs both AB and BC. Familiarity split (the paper's
F / H / R test sets), all over the same code path, entities given as token ids:

- ``F``: A, B, C (and distractor entities) are reserved tokens never seen in pretraining.
  By default their embedding and unembedding rows stay at their random init: a LoRA on the
  linear maps cannot train them. ``PipelineConfig.new_entity_rows=True`` trains each expert's
  new-entity rows beside its LoRA (:mod:`toymodels.entity_rows`); the run's config records which.
- ``H``: A is a reserved (unseen) token; B and C are familiar and ``C_i = r2(B_i)`` is the
  pretraining fact, so one hop is about familiar entities and the base already knows it
  (BC re-states it).
- ``R``: familiar entities throughout; AB and BC are counterfactual edits
  (``B_i != r1(A_i)``, ``C_i != r2(B_i)``, ``C_i != r2(r1(A_i))``), as in T2.
- ``O`` (out of distribution, Wang et al. 2024): as ``R``, but every subject ``A_i`` is one of
  the corpus's OOD entities (``task.ood_frac > 0``, :mod:`toymodels.tasks.twohop`): its atomic
  facts were pretrained, yet no pretraining chain starts at it (it may still occur inside a
  chain as a bridge or answer); B, C and distractors are in-distribution entities. The base's
  own composition there is ``pretrain_test_ood``. Not in the default :data:`FAMILIARITIES`,
  which must run on corpora without OOD entities; :data:`SPLITS` lists every split.

Shared templates (TMLR finding): with ``shared_template = k`` the AB and BC data also hold
``k`` two-hop examples ``X r1 r2 -> r2(r1(X))`` over OTHER familiar entities.

Broadcast controls (T2): for each expert, questions of its template (same relation(s))
about other, familiar subjects whose gold answer is not one of the expert's new answers;
an expert that broadcasts answers them with one of its new answers anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from toymodels.config import Config
from toymodels.tasks import Examples
from toymodels.tasks.knowledge import atomic_row, encode, two_hop_row
from toymodels.tasks.twohop import Pretraining, chain_examples

Familiarity = Literal["F", "H", "R", "O"]
FAMILIARITIES: tuple[str, ...] = ("F", "H", "R")  # the default splits
SPLITS: tuple[str, ...] = FAMILIARITIES + ("O",)


@dataclass(frozen=True)
class ExpertConfig(Config):
    n_facts: int = 8  # facts per expert = composed questions per split
    n_distractors: int = 2
    shared_template: int = 0  # two-hop examples over other entities in AB and BC data
    n_control: int = 64  # broadcast-control questions per expert

    def __post_init__(self):
        for name, low in (("n_facts", 1), ("n_distractors", 0), ("shared_template", 0), ("n_control", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"experts.{name}={value!r}: must be an integer >= {low}")


@dataclass(frozen=True)
class Control:
    """``questions`` whose gold answers are NOT in ``new_answers`` (the expert's new objects)."""

    questions: Examples
    new_answers: tuple[int, ...]


@dataclass(frozen=True)
class ExpertSet:
    """One familiarity split. ``facts[name]`` is ``(n, 3)`` ``(subject token, relation,
    object token)`` for AB, BC and distractors; ``chains`` is ``(n, 5)``
    ``(A, r1, r2, B, C)``. ``train[name]`` is each expert's data; ``facts_eval[name]`` its
    own facts without templates (AC's are the composed questions); ``composed`` the test."""

    familiarity: str
    r1: int
    r2: int
    facts: dict[str, np.ndarray]
    chains: np.ndarray
    train: dict[str, Examples]
    facts_eval: dict[str, Examples]
    composed: Examples
    controls: dict[str, Control]

    @property
    def experts(self) -> list[str]:
        return list(self.train)


def _need(cfg: ExpertConfig, fam: str, per: int, have: int, what: str) -> None:
    """Raise if split ``fam`` needs ``per`` entities per fact but only ``have`` exist."""
    if cfg.n_facts * per > have:
        raise ValueError(f"experts.n_facts={cfg.n_facts} (n_distractors={cfg.n_distractors}): split {fam} "
                         f"needs {cfg.n_facts * per} {what} but {have} exist; allowed n_facts <= {have // per}")


def _edit_objects(rng, objects: np.ndarray, forbidden: np.ndarray) -> np.ndarray:
    """Permute ``objects`` until no entry equals ``forbidden`` (counterfactual edits)."""
    for _ in range(1000):
        if not np.any(objects == forbidden):
            return objects
        objects = rng.permutation(objects)
    raise ValueError("could not draw counterfactual objects: use more entities or fewer facts")


def _entities(pre: Pretraining, cfg: ExpertConfig, fam: str, r1: int, r2: int, rng):
    """Token ids ``A, B, C`` (each ``(n,)``) and distractor ``(D, E)`` pairs."""
    tok, G = pre.graph.tokenizer, pre.graph.objects
    n, k = cfg.n_facts, cfg.n_distractors
    new = rng.permutation(np.array(tok.new_tokens))
    fam_idx = rng.permutation(pre.id_entities)
    per = 3 + 2 * k
    if fam == "F":
        _need(cfg, fam, per, len(new), "new entity tokens (graph.n_new)")
        A, B, C = new[:n], new[n:2 * n], new[2 * n:3 * n]
        rest = new[3 * n:]
        return A, B, C, [(rest[2 * j * n:(2 * j + 1) * n], rest[(2 * j + 1) * n:(2 * j + 2) * n]) for j in range(k)]
    if fam == "H":
        _need(cfg, fam, 1 + k, len(new), "new entity tokens (graph.n_new)")
        _, first = np.unique(G[fam_idx, r2], return_index=True)  # B's with distinct r2(B)
        if len(first) < n:
            raise ValueError(f"experts.n_facts={n}: H needs {n} bridges with distinct answers, graph has {len(first)}")
        Bi = fam_idx[np.sort(first)[:n]]
        D = [(new[(1 + j) * n:(2 + j) * n], np.array([tok.entity(e) for e in rng.choice(fam_idx, n)]))
             for j in range(k)]
        return new[:n], np.array([tok.entity(b) for b in Bi]), np.array([tok.entity(G[b, r2]) for b in Bi]), D
    if fam == "O":  # OOD subjects, in-distribution bridges and answers
        if len(pre.ood_entities) < n:
            raise ValueError(f"experts.n_facts={n}: split O needs {n} out-of-distribution entities, the corpus has "
                             f"{len(pre.ood_entities)}; raise task.ood_frac (allowed n_facts <= "
                             f"{len(pre.ood_entities)})")
        _need(cfg, fam, per - 1, len(fam_idx), "familiar in-distribution entities")
        Ai, pool = rng.permutation(pre.ood_entities)[:n], fam_idx
    else:
        _need(cfg, fam, per, len(fam_idx), "familiar in-distribution entities")
        Ai, pool = fam_idx[:n], fam_idx[n:]
    Bi, Ci = pool[:n], pool[n:2 * n]
    Bi = _edit_objects(rng, Bi, G[Ai, r1])
    for _ in range(1000):  # C must differ from the old fact r2(B) and the old chain r2(r1(A))
        if not np.any((Ci == G[Bi, r2]) | (Ci == G[G[Ai, r1], r2])):
            break
        Ci = rng.permutation(Ci)
    else:
        raise ValueError("could not draw counterfactual objects: use more entities or fewer facts")
    rest, D = pool[2 * n:], []
    for j, rd in enumerate(_distractor_relations(pre, r1, r2, k)):
        Di, Ei = rest[2 * j * n:(2 * j + 1) * n], rest[(2 * j + 1) * n:(2 * j + 2) * n]
        D.append((Di, _edit_objects(rng, Ei, G[Di, rd])))
    to_tok = np.vectorize(tok.entity, otypes=[np.int64])
    return to_tok(Ai), to_tok(Bi), to_tok(Ci), [(to_tok(d), to_tok(e)) for d, e in D]


def _distractor_relations(pre: Pretraining, r1: int, r2: int, k: int) -> list[int]:
    others = [r for r in range(pre.graph.n_relations) if r not in (r1, r2)] or [r1, r2]
    return [others[j % len(others)] for j in range(k)]


def _rows_atomic(tok, facts: np.ndarray) -> list:
    return [atomic_row(tok, int(s), int(r), int(o)) for s, r, o in facts]


def _controls(pre, facts: np.ndarray, subjects: np.ndarray, fmt: str, r2: int | None, n: int, rng) -> Control:
    """Template questions about familiar ``subjects`` whose gold answer avoids the new answers."""
    tok, G, r = pre.graph.tokenizer, pre.graph.objects, int(facts[0, 1])
    new_answers = tuple(int(x) for x in np.unique(facts[:, 2]))
    rows = []
    for s in rng.permutation(subjects):
        bridge = int(G[s, r])
        gold = bridge if r2 is None else int(G[bridge, r2])
        if tok.entity(gold) in new_answers:
            continue
        rows.append(atomic_row(tok, tok.entity(s), r, tok.entity(gold)) if r2 is None else
                    two_hop_row(tok, tok.entity(s), r, r2, tok.entity(bridge), tok.entity(gold), fmt))
        if len(rows) == n:
            break
    return Control(encode(rows), new_answers)


def make_expert_set(pre: Pretraining, cfg: ExpertConfig, familiarity: str,
                    rng: np.random.Generator) -> ExpertSet:
    if familiarity not in SPLITS:
        raise ValueError(f"familiarity={familiarity!r}: must be one of {', '.join(SPLITS)}")
    tok, fmt, n = pre.graph.tokenizer, pre.config.fmt, cfg.n_facts
    r1, r2 = (int(r) for r in rng.choice(pre.graph.n_relations, 2, replace=False))
    A, B, C, D = _entities(pre, cfg, familiarity, r1, r2, rng)
    col = lambda v: np.full(n, v)  # noqa: E731
    facts = {"AB": np.stack([A, col(r1), B], 1), "BC": np.stack([B, col(r2), C], 1)}
    for j, ((Dj, Ej), rd) in enumerate(zip(D, _distractor_relations(pre, r1, r2, len(D)))):
        facts[f"D{j}"] = np.stack([Dj, col(rd), Ej], 1)
    chains = np.stack([A, col(r1), col(r2), B, C], 1)
    composed = encode([two_hop_row(tok, int(a), r1, r2, int(b), int(c), fmt) for a, _, _, b, c in chains])
    facts_eval = {name: encode(_rows_atomic(tok, f)) for name, f in facts.items()}
    facts_eval["AC"] = composed
    used = {int(t) for t in np.concatenate([A, B, C] + [x for pair in D for x in pair])}
    others = np.array([e for e in rng.permutation(pre.id_entities) if tok.entity(e) not in used])
    train = dict(facts_eval)
    if cfg.shared_template:
        if 2 * cfg.shared_template > len(others):
            raise ValueError(f"experts.shared_template={cfg.shared_template}: needs {2 * cfg.shared_template} "
                             f"unused familiar entities, {len(others)} exist; allowed <= {len(others) // 2}")
        for j, name in enumerate(("AB", "BC")):
            subjects = others[j * cfg.shared_template:(j + 1) * cfg.shared_template]
            chains_x = np.stack([subjects, col(r1)[:1].repeat(len(subjects)), col(r2)[:1].repeat(len(subjects))], 1)
            train[name] = Examples.cat([train[name], chain_examples(pre.graph, chains_x, fmt)])
    train = {name: train[name] for name in ["AB", "BC", "AC"] + [k for k in facts if k.startswith("D")]}
    controls = {name: _controls(pre, f, others, fmt, None, cfg.n_control, rng) for name, f in facts.items()}
    controls["AC"] = _controls(pre, np.stack([A, col(r1), C], 1), others, fmt, r2, cfg.n_control, rng)
    return ExpertSet(familiarity, r1, r2, facts, chains, train, facts_eval, composed, controls)


def broadcast_rate(predicted_final: torch.Tensor, control: Control) -> float:
    """Share of control questions answered with one of the expert's NEW answers."""
    if not len(predicted_final):
        return float("nan")
    new = torch.tensor(control.new_answers, dtype=predicted_final.dtype)
    return torch.isin(predicted_final, new).float().mean().item()
