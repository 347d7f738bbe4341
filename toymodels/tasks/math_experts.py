"""Fine-tuning sets of the toy math reuse experiment (issue 10 item 2; PAPER.md, TMLR task families).

Experts (names as in ``MathExpertSet.train``):

- ``facts``: every attribute of ``n_fact_entities`` new entities (never pretrained);
- ``procedure``: the new question types ``u*`` about context entities, their values stated in
  the text, so it learns the procedure and no fact;
- ``composed``: the composed problems themselves (the target-task expert, as AC in
  :mod:`toymodels.tasks.experts`);
- ``D0, D1, ...``: distractors, the facts of other new entities, written like ``facts``.

The composed problem asks a new question type about the facts adapter's entities without
stating their values: it needs the procedure of one adapter and the facts of the other.

The TMLR condition (``template``): the facts adapter's rows are written either in the worked
solution template the procedure data use (``same``: problems of *familiar* question types about
its entities, whose answers hold the lookup line ``attr n = v ;``, exactly the first line a
composed solution needs) or outside it (``different``: ``BOS n attr -> v EOS``). Both write each
fact ``per_fact`` times. ``same`` uses the corpus format; the template is shared in the strict
sense only with ``fmt = worked`` (with ``direct`` the facts come as direct-answer problems).

Broadcast controls (:class:`toymodels.tasks.family.SpanControl`, one answer set per row): a
question of the expert's template about FAMILIAR entities whose gold answer differs from every
answer the same question would have about the expert's own entities (its "new answers"). The
composed control asks each composed question again, constants kept, about familiar entities, so
the true composed answer is among its new answers. The procedure adapter has no control: its
answers are functions of the stated values, not fixed values it could broadcast; its
interference shows in ``retention["context_test"]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Literal

import numpy as np

from toymodels.config import Config, check_fields, counts
from toymodels.tasks import Examples
from toymodels.tasks.knowledge import encode
from toymodels.tasks.math_corpus import MathPretraining, combos, draw_problems
from toymodels.tasks.math_formats import atomic_row, number_span, problem_row, problems_examples
from toymodels.tasks.math_problems import ATTRIBUTES, MathWorld, Problem, make_problem, solve
from toymodels.tasks.family import SpanControl, SpanExpertSet

Template = Literal["same", "different"]
TEMPLATES: tuple[str, ...] = ("same", "different")


@dataclass(frozen=True)
class MathExpertConfig(Config):
    n_fact_entities: int = 4  # new entities whose every attribute the facts adapter learns
    per_fact: int = 2  # rows per fact in the facts (and distractor) data
    template: Template = "same"
    n_procedure: int = 64
    n_composed: int = 16
    n_distractors: int = 1  # distractor experts
    n_control: int = 64  # questions per control and per probe

    def __post_init__(self):
        check_fields("experts", self, {"template": (self.template in TEMPLATES, f"one of {', '.join(TEMPLATES)}")} |
                     counts(self, {"n_fact_entities": 2, "per_fact": 1, "n_procedure": 1, "n_composed": 1,
                                   "n_distractors": 0, "n_control": 1}))


@dataclass(frozen=True)
class MathExpertSet(SpanExpertSet):
    """Fields of :class:`SpanExpertSet`, plus ``entities[name]``: the entities of the facts and
    distractor data; ``problems[name]``: the problems behind each set built from problems
    (``probe/<name>`` for probes). Probes: ``facts_atomic`` (the facts adapter's facts, template
    free), ``facts_in_familiar`` (familiar question types about its entities, facts recalled),
    ``procedure_on_memory`` (new question types about familiar entities, facts recalled),
    ``procedure_in_context`` (new question types, facts stated, problems not trained on)."""

    template: str
    entities: dict[str, np.ndarray]
    problems: dict[str, list[Problem]]


def facts_problems_of(world: MathWorld, ents: np.ndarray, per_fact: int, rng: np.random.Generator) -> list[Problem]:
    """``per_fact`` familiar-type problems per fact of ``ents`` holding that fact's lookup line;
    any second slot is another of ``ents``, so no other entity's fact enters the data."""
    out = []
    for e in ents:
        for a in range(world.config.n_attributes):
            others = [int(x) for x in ents if x != e]
            cands = [(q, tuple(int(e) if i == s else o for i in range(world.qtypes[q].n_slots)))
                     for q in world.familiar_qtypes for aa, s in world.qtypes[q].facts if aa == a for o in others]
            made = [p for _ in range(per_fact) for k in rng.permutation(len(cands))
                    if (p := make_problem(world, *cands[k], rng, False)) is not None][:per_fact]
            if len(made) < per_fact:
                raise ValueError(f"no familiar question type states fact {ATTRIBUTES[a]}_"
                                 f"{world.tokenizer.entity_name(int(e))} with results in range: raise "
                                 f"world.max_value, or use template 'different'")
            out += made
    return out


def _swap_answers(world: MathWorld, p: Problem, ents: np.ndarray) -> frozenset:
    """Final spans of ``p``'s question with its entities replaced by any of ``ents``."""
    qt, out = world.qtypes[p.qtype], set()
    for perm in permutations(ents, qt.n_slots):
        steps = solve(qt, {(a, s): int(world.values[perm[s], a]) for a, s in qt.facts}, p.consts,
                      world.config.max_value)
        if steps is not None:
            out.add(number_span(world.tokenizer, steps[-1][3]))
    return frozenset(out)


def _control(rows_and_gold, n: int, sep: int | None) -> SpanControl:
    """Keep the first ``n`` ``(row, gold span, new spans)`` whose gold is not a new span."""
    kept = [(row, new) for row, gold, new in rows_and_gold if new and gold not in new][:n]
    return SpanControl(encode([r for r, _ in kept]), tuple(new for _, new in kept), sep)


def _controls(pre: MathPretraining, ents: np.ndarray, template: str, n: int, rng: np.random.Generator,
              like: list[Problem] | None = None) -> SpanControl:
    """The expert's template about familiar entities: atomic facts (``different``), problems of
    familiar question types (``same``), or (``like``) each of these problems with its entities
    replaced by familiar ones, constants kept (the composed control: same question, other subject)."""
    world, fmt, d = pre.world, pre.config.fmt, pre.config.n_distractors
    tok = world.tokenizer
    sep = tok.symbol("ANS") if fmt == "worked" else None
    if like is None and template == "different":
        facts = [(int(e), a) for e in rng.permutation(world.familiar) for a in range(world.config.n_attributes)]
        span = lambda e, a: number_span(tok, int(world.values[e, a]))  # noqa: E731
        return _control(((atomic_row(tok, e, a, int(world.values[e, a])), span(e, a),
                          frozenset(span(x, a) for x in ents)) for e, a in facts), n, sep)
    if like is None:
        probs = draw_problems(world, combos(world, world.familiar_qtypes, world.familiar), 4 * n, False, d, rng)
    else:
        swapped = (make_problem(world, p.qtype, tuple(int(e) for e in rng.choice(world.familiar, len(p.entities),
                                                                                 replace=False)),
                                rng, False, d, consts=p.consts) for k in range(8 * n) for p in [like[k % len(like)]])
        probs = [p for p in swapped if p is not None]
    return _control(((problem_row(tok, p, fmt), number_span(tok, p.answer), _swap_answers(world, p, ents))
                     for p in probs), n, sep)


def _key(p: Problem) -> tuple:
    return p.qtype, p.entities, p.consts, p.facts  # distractor sentences do not make a new question


def distinct_problems(problems: list[Problem], exclude: list[Problem] = ()) -> list[Problem]:
    """``problems`` without repeats and without any of ``exclude`` (same question, same text)."""
    out, seen = [], {_key(p) for p in exclude}
    for p in problems:
        if _key(p) not in seen:
            seen.add(_key(p))
            out.append(p)
    return out


def make_math_expert_set(pre: MathPretraining, cfg: MathExpertConfig, rng: np.random.Generator) -> MathExpertSet:
    world, fmt, d = pre.world, pre.config.fmt, pre.config.n_distractors
    tok, n_f = world.tokenizer, cfg.n_fact_entities
    need = n_f * (1 + cfg.n_distractors)
    if need > len(world.new):
        raise ValueError(f"experts.n_fact_entities={n_f} with n_distractors={cfg.n_distractors} needs {need} "
                         f"new entities but world.n_new={len(world.new)}; allowed n_fact_entities <= "
                         f"{len(world.new) // (1 + cfg.n_distractors)}")
    # one generator per component: the procedure and composed sets do not depend on the template
    g_ent, g_facts, g_proc, g_comp, g_ctrl, g_ctrl_composed, g_probe = rng.spawn(7)
    new = g_ent.permutation(world.new)
    entities = {"facts": new[:n_f]} | {f"D{j}": new[(j + 1) * n_f:(j + 2) * n_f] for j in range(cfg.n_distractors)}
    problems: dict[str, list[Problem]] = {}
    train: dict[str, Examples] = {}
    for name, ents in entities.items():
        if cfg.template == "same":
            problems[name] = facts_problems_of(world, ents, cfg.per_fact, g_facts)
            train[name] = problems_examples(world, problems[name], fmt)
        else:
            train[name] = encode([atomic_row(tok, int(e), a, int(world.values[e, a])) for e in ents
                                  for a in range(world.config.n_attributes) for _ in range(cfg.per_fact)])
    problems["procedure"] = draw_problems(world, combos(world, world.new_qtypes, world.context), cfg.n_procedure,
                                          True, d, g_proc)
    composed_pool = draw_problems(world, combos(world, world.new_qtypes, entities["facts"]), 4 * cfg.n_composed,
                                  False, d, g_comp)
    problems["composed"] = distinct_problems(composed_pool)[:cfg.n_composed]
    if len(problems["composed"]) < cfg.n_composed:
        raise ValueError(f"experts.n_composed={cfg.n_composed}: only {len(problems['composed'])} distinct composed "
                         f"problems exist; lower it or add world.n_new_qtypes / n_fact_entities")
    for name in ("procedure", "composed"):
        train[name] = problems_examples(world, problems[name], fmt)
    train = {name: train[name] for name in ["facts", "procedure", "composed"] + list(entities)[1:]}
    controls = {name: _controls(pre, entities[name], cfg.template, cfg.n_control, g_ctrl) for name in entities}
    controls["composed"] = _controls(pre, entities["facts"], cfg.template, cfg.n_control, g_ctrl_composed,
                                     like=problems["composed"])
    n = cfg.n_control
    def draw(qtypes, ents, given):
        return draw_problems(world, combos(world, qtypes, ents), 2 * n, given, d, g_probe)

    probe_problems = {  # each skill alone, on questions no expert trained on
        "facts_in_familiar": distinct_problems(draw(world.familiar_qtypes, entities["facts"], False),
                                       problems.get("facts", [])),
        "procedure_on_memory": distinct_problems(draw(world.new_qtypes, world.familiar, False)),
        "procedure_in_context": distinct_problems(draw(world.new_qtypes, world.context, True), problems["procedure"])}
    probe_problems = {k: v[:n] for k, v in probe_problems.items()}
    problems |= {f"probe/{k}": v for k, v in probe_problems.items()}
    probes = {"facts_atomic": encode([atomic_row(tok, int(e), a, int(world.values[e, a])) for e in entities["facts"]
                                      for a in range(world.config.n_attributes)])}
    probes |= {k: problems_examples(world, v, fmt) for k, v in probe_problems.items()}
    retention = {k: pre.eval_sets[k] for k in ("atomic", "context_test", "memory_test") if k in pre.eval_sets}
    return MathExpertSet(train=train, facts_eval=dict(train), composed=train["composed"], controls=controls,
                         retention=retention, probes=probes, template=cfg.template, entities=entities,
                         problems=problems)
