"""The pretraining corpus of the toy math problems: what a base must know before any adapter.

A tiny base must be able to do the *procedure* of a familiar question type when the facts are
stated in the text, and to *recall* familiar facts, so that reuse has something to build on
(as :mod:`toymodels.tasks.twohop` requires a base that composes). The corpus holds:

- ``atomic``: every fact of the familiar entities, ``BOS e attr -> v EOS``;
- ``arith``: arithmetic drills ``a op b = r`` over the number range (``a <= max_value``,
  ``b <= max_fact``: every step of every problem has that shape), a ``heldout_frac`` held out
  of the drills (a worked solution in the corpus may still contain the same step);
- ``context``: familiar question types about context entities, values stated in the text; with
  ``new_names`` (default) also about the new entities ``n*``, values drawn fresh per problem and
  stated, so the base can read and WRITE their names but learns no fact about them;
- ``memory``: familiar question types about familiar entities, values recalled (the analogue of
  two-hop chains); a ``heldout_frac`` share of the ``(question type, entities)`` combinations is
  never trained, halved into ``memory_val`` and ``memory_test``.

New question types ``u*`` never appear, nor does any fixed value of a new entity (pinned by a test).

Why ``new_names``: a LoRA cannot train ``W_U``, and the rows of ``W_U`` of tokens the base never
had to predict are pushed down in pretraining (norm 0.77 vs 1.80 for seen entities, seed 0), so a
worked solution that writes a never-seen ``n*`` in its lookup line cannot be learned: without it
the facts expert memorised 0.17 of its worked rows (careful_finetune, seed 0; 33 of its 69 wrong
tokens were the entity names) and the joint-data LoRA answered no composed problem. A pretrained
LM is in the first situation: a new entity's name is made of tokens it can write.
Eval sets: ``atomic``, ``arith_test``, ``context_test`` (fresh problems, none equal to a training
row), ``memory_train``, ``memory_val``, ``memory_test``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from toymodels.config import Config, check_fields, counts
from toymodels.tasks import Examples
from toymodels.tasks.knowledge import encode
from toymodels.tasks.math_formats import arith_row, atomic_examples, problem_row, problems_examples
from toymodels.tasks.math_problems import (FORMATS, OPS, Format, MathWorld, MathWorldConfig, Problem,
                                           make_problem, make_world)


@dataclass(frozen=True)
class MathTaskConfig(Config):
    world: MathWorldConfig = field(default_factory=MathWorldConfig)
    fmt: Format = "worked"
    n_distractors: int = 0  # irrelevant fact sentences in every problem's text
    new_names: bool = True  # context problems also name the new entities, values stated (module docstring)
    n_context_problems: int = 3000
    n_memory_problems: int = 2000
    heldout_frac: float = 0.2
    n_eval: int = 256

    def __post_init__(self):
        check_fields("task", self, {"fmt": (self.fmt in FORMATS, f"one of {', '.join(FORMATS)}"),
                                    "heldout_frac": (0.0 < self.heldout_frac < 1.0, "in (0, 1)")} |
                     counts(self, {"n_distractors": 0, "n_context_problems": 1, "n_memory_problems": 1, "n_eval": 1}))


@dataclass(frozen=True)
class MathPretraining:
    """The corpus, its eval sets, and the problems behind them (``problems[name]``)."""

    config: MathTaskConfig
    world: MathWorld
    train: Examples
    eval_sets: dict[str, Examples]
    problems: dict[str, list[Problem]]
    heldout_combos: frozenset[tuple[int, tuple[int, ...]]]


def sample(items: list, n: int, rng: np.random.Generator) -> list:
    """At most ``n`` of ``items``, in their original order."""
    return items if len(items) <= n else [items[i] for i in np.sort(rng.choice(len(items), n, replace=False))]


def arithmetic_drills(world: MathWorld) -> list[tuple[int, str, int, int]]:
    """Every ``(a, op, b, a op b)`` with ``a <= max_value``, ``1 <= b <= max_fact``, result in range."""
    cfg = world.config
    return [(a, op, b, fn(a, b)) for a in range(cfg.max_value + 1) for op, fn in OPS.items()
            for b in range(1, cfg.max_fact + 1) if 0 <= fn(a, b) <= cfg.max_value]


def draw_problems(world: MathWorld, combos: list[tuple[int, tuple[int, ...]]], n: int, given: bool,
                  n_distractors: int, rng: np.random.Generator) -> list[Problem]:
    """``n`` problems cycling through ``combos`` in a random order (combos with no valid constants
    are skipped); raises if none of them has one."""
    out: list[Problem] = []
    while len(out) < n:
        before = len(out)
        for i in rng.permutation(len(combos)):
            p = make_problem(world, combos[i][0], combos[i][1], rng, given, n_distractors)
            if p is not None:
                out.append(p)
                if len(out) == n:
                    break
        if len(out) == before:
            raise ValueError(f"no valid problem among {len(combos)} question/entity combinations: "
                             f"raise world.max_value or lower world.max_fact")
    return out


def one_each(world: MathWorld, combos: list[tuple[int, tuple[int, ...]]], n_distractors: int,
             rng: np.random.Generator) -> list[Problem]:
    """One recalled-facts problem per combination that has valid constants."""
    drawn = (make_problem(world, q, ents, rng, False, n_distractors) for q, ents in combos)
    return [p for p in drawn if p is not None]


def combos(world: MathWorld, qtypes, entities) -> list[tuple[int, tuple[int, ...]]]:
    """Every ``(question type, distinct entities per slot)``."""
    return [(q, tuple(int(e) for e in ents)) for q in qtypes
            for ents in permutations(entities, world.qtypes[q].n_slots)]


def make_math_pretraining(cfg: MathTaskConfig, rng: np.random.Generator) -> MathPretraining:
    world = make_world(cfg.world, rng)
    tok, fmt, n_eval, d = world.tokenizer, cfg.fmt, cfg.n_eval, cfg.n_distractors
    facts = [(int(e), a) for e in world.familiar for a in range(cfg.world.n_attributes)]
    drills = arithmetic_drills(world)
    drills = [drills[i] for i in rng.permutation(len(drills))]
    n_arith_test = int(round(cfg.heldout_frac * len(drills)))
    named = np.concatenate([world.context, world.new]) if cfg.new_names else world.context
    context_combos = combos(world, world.familiar_qtypes, named)
    context = draw_problems(world, context_combos, cfg.n_context_problems, True, d, rng)
    seen = {tuple(problem_row(tok, p, fmt)[0]) for p in context}
    context_test = [p for p in draw_problems(world, context_combos, 2 * n_eval, True, d, rng)
                    if tuple(problem_row(tok, p, fmt)[0]) not in seen][:n_eval]
    memory_combos = combos(world, world.familiar_qtypes, world.familiar)
    memory_combos = [memory_combos[i] for i in rng.permutation(len(memory_combos))]
    n_held = int(round(cfg.heldout_frac * len(memory_combos)))
    val_combos, test_combos = memory_combos[:n_held:2], memory_combos[1:n_held:2]
    memory = draw_problems(world, memory_combos[n_held:], cfg.n_memory_problems, False, d, rng)
    problems = {"context": context, "context_test": context_test, "memory": memory,
                "memory_val": sample(one_each(world, val_combos, d, rng), n_eval, rng),
                "memory_test": sample(one_each(world, test_combos, d, rng), n_eval, rng)}
    train = Examples.cat([atomic_examples(world, facts),
                          encode([arith_row(tok, *s) for s in drills[n_arith_test:]]),
                          problems_examples(world, context, fmt), problems_examples(world, memory, fmt)])
    eval_sets = {"atomic": atomic_examples(world, sample(facts, n_eval, rng)),
                 "arith_test": encode([arith_row(tok, *s) for s in drills[:n_arith_test][:n_eval]]),
                 "context_test": problems_examples(world, context_test, fmt),
                 "memory_train": problems_examples(world, sample(memory, n_eval, rng), fmt),
                 "memory_val": problems_examples(world, problems["memory_val"], fmt),
                 "memory_test": problems_examples(world, problems["memory_test"], fmt)}
    return MathPretraining(cfg, world, train, {k: v for k, v in eval_sets.items() if len(v)}, problems,
                           frozenset(val_combos + test_combos))
