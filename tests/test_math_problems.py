"""Toy math word problems: tokenizer, SymPy oracle, formats, corpus splits, expert sets, controls.

The oracle reads the TOKENS of every generated row back (an independent parser written here),
evaluates the problem's SymPy expression with the values the text states or the world holds,
and checks every worked step by Python arithmetic.
"""
import re

import numpy as np
import pytest
import sympy
import torch

from toymodels.tasks.knowledge import BOS, EOS, PAD
from toymodels.tasks.math_corpus import MathTaskConfig, make_math_pretraining
from toymodels.tasks.math_experts import MathExpertConfig, make_math_expert_set
from toymodels.tasks.math_formats import problem_row
from toymodels.tasks.math_problems import ATTRIBUTES, MathWorldConfig
from toymodels.tasks.family import SpanControl, final_span, span_broadcast_rate

WORLD = MathWorldConfig(n_entities=12, n_context=8, n_new=12, n_attributes=3, n_qtypes=4, n_new_qtypes=3,
                        max_steps=3)


def pretraining(fmt="worked", seed=0, **kw):
    cfg = MathTaskConfig(world=WORLD, fmt=fmt, n_context_problems=200, n_memory_problems=150, n_eval=64, **kw)
    return make_math_pretraining(cfg, np.random.default_rng(seed))


def experts(pre, seed=1, **kw):
    cfg = MathExpertConfig(n_fact_entities=4, n_procedure=24, n_composed=8, n_control=24, **kw)
    return make_math_expert_set(pre, cfg, np.random.default_rng(seed))


def words(tok, row) -> list[str]:
    return [tok.name(int(t)) for t in row if int(t) != PAD]


def read_number(ws: list[str], i: int) -> tuple[int, int]:
    """The decimal number starting at ``ws[i]`` and the index after it."""
    j = i
    while j < len(ws) and ws[j].isdigit():
        j += 1
    assert j > i, f"expected a number at {i}: {ws}"
    return int("".join(ws[i:j])), j


def fact_lines(ws: list[str]) -> list[tuple[str, str, int]]:
    """Every ``attr ent = v ;`` in ``ws`` as ``(attr, ent, v)``."""
    text = " ".join(ws)
    pattern = rf"({'|'.join(ATTRIBUTES)}) ([ecn]\d+) = ((?:\d )+);"
    return [(a, e, int(v.replace(" ", ""))) for a, e, v in re.findall(pattern, text)]


def check_row(pre, tokens, mask, p, fmt, given_new=False):
    """Parse one problem row from its tokens and check it against the SymPy oracle. Context
    entities' values must be stated in the text, familiar ones' never; new ones' stated exactly
    when ``given_new`` (pretraining's stated-value problems, which also name new entities)."""
    world, tok, cfg = pre.world, pre.world.tokenizer, pre.world.config
    ws = words(tok, tokens)
    n_question = int((~mask[:len(ws)]).sum())
    question, answer = ws[:n_question], ws[n_question:]
    assert mask[:len(ws)].tolist() == [False] * n_question + [True] * len(answer)  # one contiguous span
    assert question[0] == "BOS" and question[-1] == "?" and answer[-1] == "EOS"
    stated = {f"{a}_{e}": v for a, e, v in fact_lines(question)}
    q = [w for w in question if re.fullmatch(r"[qu]\d+", w)]
    assert len(q) == 1
    expr = sympy.sympify(p.expression)
    values = {}
    for sym in expr.free_symbols:
        attr, ent = str(sym).split("_")
        if ent.startswith("c") or (ent.startswith("n") and given_new):  # the value must be stated in the text
            values[sym] = stated[str(sym)]
        else:
            assert str(sym) not in stated  # recalled facts are never given in context
            values[sym] = int(world.values[cfg.n_entities + cfg.n_context + int(ent[1:]) if ent[0] == "n"
                                           else int(ent[1:]), ATTRIBUTES.index(attr)])
    truth = int(expr.subs(values))
    assert 0 <= truth <= cfg.max_value
    if fmt == "direct":
        value, end = read_number(answer, 0)
        assert value == truth and answer[end:] == ["EOS"]
        return
    i, lookups, results = 0, [], []
    while answer[i] in ATTRIBUTES:  # lookup lines: attr ent = v ;
        assert answer[i + 2] == "="
        v, j = read_number(answer, i + 3)
        assert answer[j] == ";"
        lookups.append((f"{answer[i]}_{answer[i + 1]}", v))
        i = j + 1
    assert [name for name, _ in lookups] == [str(s) for s in sorted(expr.free_symbols, key=str)] or \
        sorted(name for name, _ in lookups) == sorted(str(s) for s in expr.free_symbols)  # each needed fact once
    assert len(lookups) == len(p.facts)
    assert all(values[sympy.Symbol(name)] == v for name, v in lookups)  # every lookup line is true
    while answer[i] != "ANS":
        left, i = read_number(answer, i)
        op = answer[i]
        right, i = read_number(answer, i + 1)
        assert answer[i] == "="
        result, i = read_number(answer, i + 1)
        assert answer[i] == ";"
        i += 1
        assert result == {"+": left + right, "-": left - right, "*": left * right}[op]  # each step is right
        assert 0 <= result <= cfg.max_value
        results.append(result)
    assert len(results) == len(world.qtypes[p.qtype].ops)
    value, end = read_number(answer, i + 1)
    assert value == truth == results[-1] and answer[end:] == ["EOS"]


@pytest.mark.parametrize("fmt", ["direct", "worked"])
def test_every_generated_answer_equals_the_sympy_evaluation_and_every_worked_step_is_right(fmt):
    pre = pretraining(fmt, n_distractors=2)
    es = experts(pre, template="same")
    tok = pre.world.tokenizer
    checked = 0
    for source, names in ((pre.problems, list(pre.problems)), (es.problems, list(es.problems))):
        for name in names:
            for p in source[name]:
                q, a = problem_row(tok, p, fmt)
                tokens = torch.tensor(q + a)
                check_row(pre, tokens, torch.tensor([False] * len(q) + [True] * len(a)), p, fmt,
                          given_new=source is pre.problems and name.startswith("context"))
                checked += 1
    assert checked > 500
    # the rows inside the Examples are those rows, padded
    composed = es.composed
    for i, p in enumerate(es.problems["composed"]):
        check_row(pre, composed.tokens[i], composed.answer_mask[i], p, fmt)


def test_the_oracle_catches_a_wrong_answer():
    pre = pretraining()
    p = pre.problems["memory"][0]
    q, a = problem_row(pre.world.tokenizer, p, "worked")
    a = list(a)
    a[-2] = pre.world.tokenizer.symbol(str((int(pre.world.tokenizer.name(a[-2])) + 1) % 10))  # last digit of ANS
    with pytest.raises(AssertionError):
        check_row(pre, torch.tensor(q + a), torch.tensor([False] * len(q) + [True] * len(a)), p, "worked")


@pytest.fixture(scope="module")
def pre():
    return pretraining("worked", n_distractors=1)


@pytest.fixture(scope="module")
def both(pre):
    return {t: experts(pre, template=t) for t in ("same", "different")}


def token_set(ex) -> set[int]:
    return set(ex.tokens.unique().tolist())


def row_set(ex) -> set[tuple[int, ...]]:
    return {tuple(t for t in row.tolist() if t != PAD) for row in ex.tokens}


def test_tokenizer_names_are_unique_and_cover_the_vocabulary(pre):
    tok = pre.world.tokenizer
    names = [tok.name(t) for t in range(tok.d_vocab)]
    assert len(set(names)) == tok.d_vocab == 3 + 18 + 3 + 7 + 32
    assert names[:3] == ["PAD", "BOS", "EOS"] and [tok.name(t) for t in tok.digits] == list("0123456789")
    assert tok.decode(tok.number(305)) == "3 0 5" and tok.decode([tok.entity(12), tok.entity(31)]) == "c0 n11"
    assert tok.decode([tok.qtype(3), tok.qtype(4)]) == "q3 u0"
    with pytest.raises(ValueError, match="must be >= 0"):
        tok.number(-1)


def test_every_row_is_in_vocab_and_answer_masks_mark_exactly_the_answer(pre, both):
    tok = pre.world.tokenizer
    sets = [pre.train, *pre.eval_sets.values()]
    for es in both.values():
        sets += [*es.train.values(), es.composed, *es.probes.values(), *(c.questions for c in es.controls.values())]
    for ex in sets:
        assert ex.tokens.min() >= 0 and ex.tokens.max() < tok.d_vocab
        assert (ex.tokens[:, 0] == BOS).all()
        n = (ex.tokens != PAD).sum(1)  # (N,) row lengths; PAD only at the end
        assert torch.equal(ex.tokens != PAD, torch.arange(ex.tokens.shape[1]) < n[:, None])
        last = ex.tokens.gather(1, (n - 1)[:, None])[:, 0]
        assert (last == EOS).all() and ((ex.tokens == EOS).sum(1) == 1).all()
        start = ex.answer_mask.int().argmax(1)  # first answer position; the span runs to EOS
        pos = torch.arange(ex.tokens.shape[1])
        assert torch.equal(ex.answer_mask, (pos >= start[:, None]) & (pos < n[:, None]))
        # final_answer_pos: the last digit of the number just before EOS
        assert torch.equal(ex.final_answer_pos, n - 2)
        assert all(int(t) in tok.digits for t in ex.final_answers)


def test_answer_formats_follow_the_documented_layout(pre):
    direct = pretraining("direct")
    tok = pre.world.tokenizer
    ans, q = tok.symbol("ANS"), tok.symbol("?")
    for ex in (pre.eval_sets["memory_test"], pre.eval_sets["context_test"]):  # worked
        first = ex.answer_mask.int().argmax(1)
        assert (ex.tokens.gather(1, (first - 1)[:, None]) == q).all()  # the answer follows "?"
        assert ((ex.tokens == ans) & ex.answer_mask).sum(1).eq(1).all()
    for ex in (direct.eval_sets["memory_test"], direct.eval_sets["context_test"]):
        answers = ex.tokens[ex.answer_mask].tolist()
        assert set(answers) <= set(tok.digits) | {EOS} and ans not in ex.tokens.tolist()
    # same seed, same problems: the direct answer is the worked answer's ANS number
    p = pre.problems["memory_test"][0]
    assert problem_row(tok, p, "direct")[1] == problem_row(tok, p, "worked")[1][-len(str(p.answer)) - 1:]
    assert problem_row(tok, p, "direct")[0] == problem_row(tok, p, "worked")[0]
    with pytest.raises(ValueError, match="fmt='cot'"):
        problem_row(tok, p, "cot")


def test_generation_is_deterministic_per_seed(pre, both):
    again = pretraining("worked", n_distractors=1)
    other = pretraining("worked", seed=5, n_distractors=1)
    assert torch.equal(pre.train.tokens, again.train.tokens)
    assert np.array_equal(pre.world.values, again.world.values) and pre.world.qtypes == again.world.qtypes
    assert not torch.equal(pre.train.tokens[:200], other.train.tokens[:200])
    es = experts(again, template="same")
    for name in es.train:
        assert torch.equal(es.train[name].tokens, both["same"].train[name].tokens)
    assert not torch.equal(experts(pre, seed=2, template="same").composed.tokens, es.composed.tokens)
    # the procedure and composed data do not depend on the template condition
    for name in ("procedure", "composed"):
        assert torch.equal(both["same"].train[name].tokens, both["different"].train[name].tokens)


def test_pretraining_never_shows_new_qtypes_nor_a_fixed_value_of_a_new_entity(pre):
    """new_names (default): a new entity's name appears only in rows whose question states every
    one of its facts the answer uses (``attr n = v ;`` in the text), with values that vary across
    the corpus; new_names=False: its token never appears. New question types never do."""
    world, tok = pre.world, pre.world.tokenizer
    new_ents = {tok.entity(int(e)) for e in world.new}
    assert not {tok.qtype(q) for q in world.new_qtypes} & token_set(pre.train)
    stated: dict[tuple[int, int], set] = {}
    named = 0
    for tokens, mask in zip(pre.train.tokens.tolist(), pre.train.answer_mask.tolist()):
        question = [t for t, m in zip(tokens, mask) if not m and t != PAD]
        answer = [t for t, m in zip(tokens, mask) if m]
        if not new_ents & set(tokens):
            continue
        named += 1
        assert not new_ents & {question[1]}  # never the subject of an atomic row
        for i, t in enumerate(answer):
            if t in new_ents:  # a lookup line attr n = v ; copied from the text
                end = answer.index(tok.symbol(";"), i)
                line = answer[i - 1:end + 1]
                assert any(question[j:j + len(line)] == line for j in range(len(question)))
                stated.setdefault((line[0], t), set()).add(tuple(line[3:-1]))
    assert named > 20 and sum(len(v) > 1 for v in stated.values()) > len(stated) // 2
    hidden = make_math_pretraining(MathTaskConfig(world=WORLD, n_context_problems=200, n_memory_problems=150,
                                                  n_eval=64, new_names=False), np.random.default_rng(0))
    assert not new_ents & token_set(hidden.train)


def test_pretraining_holds_out_its_test_combinations(pre):
    world = pre.world
    held = pre.heldout_combos
    assert held and not {(p.qtype, p.entities) for p in pre.problems["memory"]} & held
    assert {(p.qtype, p.entities) for p in pre.problems["memory_test"]} <= held
    assert not row_set(pre.eval_sets["context_test"]) & row_set(pre.train)
    assert not row_set(pre.eval_sets["arith_test"]) & row_set(pre.train)
    assert all(e in world.context or e in world.new for p in pre.problems["context"] for e in p.entities)
    assert all(e in world.familiar for p in pre.problems["memory"] for e in p.entities)


def test_expert_datasets_are_disjoint_where_the_design_says(pre, both):
    world, tok = pre.world, pre.world.tokenizer
    for template, es in both.items():
        fact_tokens = {tok.entity(int(e)) for e in es.entities["facts"]}
        d_tokens = {tok.entity(int(e)) for e in es.entities["D0"]}
        new_q = {tok.qtype(q) for q in world.new_qtypes}
        assert not fact_tokens & d_tokens
        assert not fact_tokens & token_set(es.train["procedure"])  # the procedure never sees the facts
        assert not new_q & (token_set(es.train["facts"]) | token_set(es.train["D0"]))  # facts never the procedure
        assert all(e in world.context for p in es.problems["procedure"] for e in p.entities)
        for p in es.problems["composed"]:
            assert p.qtype in world.new_qtypes and set(p.entities) <= set(es.entities["facts"].tolist())
            assert not {(e, a) for e, a, _ in p.facts} & {(e, a) for e, a, _ in p.context}  # facts not stated
        composed = row_set(es.composed)
        assert len(composed) == len(es.composed)
        for name in ("facts", "procedure", "D0"):
            assert not composed & row_set(es.train[name])
        assert not row_set(es.probes["procedure_in_context"]) & row_set(es.train["procedure"])
        assert not row_set(es.probes["facts_in_familiar"]) & row_set(es.train["facts"])


def test_template_conditions_differ_exactly_in_how_the_facts_are_written(pre, both):
    tok = pre.world.tokenizer
    eq, semi = tok.symbol("="), tok.symbol(";")
    same, diff = both["same"], both["different"]
    facts = [(int(e), a, int(pre.world.values[e, a])) for e in same.entities["facts"] for a in range(3)]
    line = lambda e, a, v: [tok.attribute(a), tok.entity(e), eq, *tok.number(v), semi]  # noqa: E731
    same_answers = [r[m].tolist() for r, m in zip(same.train["facts"].tokens, same.train["facts"].answer_mask)]
    contains = lambda seq, sub: any(seq[i:i + len(sub)] == sub for i in range(len(seq)))  # noqa: E731
    for e, a, v in facts:  # "same": each fact is a lookup line of some worked answer, per_fact times
        assert sum(contains(ans, line(e, a, v)) for ans in same_answers) >= 2
    # "different": BOS ent attr -> v EOS, no structure token at all
    assert diff.train["facts"].tokens[:, 3:].ne(eq).all() and len(diff.train["facts"]) == len(facts) * 2
    for e, a, v in facts:
        assert ([BOS, tok.entity(e), tok.attribute(a)] + tok.number(v) + [EOS]) in \
            [[t for t in r if t != PAD] for r in diff.train["facts"].tokens.tolist()]
    # the composed solution's first line is in the "same" facts data and nowhere in the "different" data
    first = [r[m].tolist()[:5 + len(str(p.facts[0][2])) - 1] for r, m, p in
             zip(same.composed.tokens, same.composed.answer_mask, same.problems["composed"])]
    assert all(any(contains(ans, f) for ans in same_answers) for f in first)
    flat = diff.train["facts"].tokens.tolist()
    assert not any(contains(r, f) for r in flat for f in first)


def test_controls_exclude_the_new_answers_and_the_broadcast_rate_counts_them(pre, both):
    tok = pre.world.tokenizer
    for es in both.values():
        assert set(es.controls) == {"facts", "D0", "composed"}
        for name, c in es.controls.items():
            assert len(c.questions) > 5 and all(c.new_answers)
            gold = [final_span(c.questions.tokens[i], c.questions.answer_mask[i], c.sep)
                    for i in range(len(c.questions))]
            assert all(g is not None and g not in new for g, new in zip(gold, c.new_answers))
            assert span_broadcast_rate(c.questions.tokens, c) == 0.0  # the gold answers broadcast nothing
        control = es.controls["composed"]
        composed = {final_span(es.composed.tokens[i], es.composed.answer_mask[i], control.sep)
                    for i in range(len(es.composed))}
        assert composed <= set().union(*control.new_answers)  # the true composed answers count as new
        questions = {(p.qtype, p.consts) for p in es.problems["composed"]}
        for row in control.questions.tokens:  # same question type and constants, familiar entities
            ws = words(tok, row)
            q = next(i for i, w in enumerate(ws) if re.fullmatch(r"u\d+", w))
            qtype = int(ws[q][1:]) + pre.world.config.n_qtypes
            ents = [w for w in ws[q + 1:ws.index("?")] if re.fullmatch(r"[ecn]\d+", w)]
            assert all(e.startswith("e") for e in ents)
            consts = tuple(int(c.replace(" ", "")) for c in " ".join(ws[q + 1 + len(ents):ws.index("?")]).split(" , ")
                           if c)
            assert (qtype, consts) in questions
    # plant a broadcast: write a new answer of the same length into half of the rows
    c = both["different"].controls["facts"]
    decoded, planted = c.questions.tokens.clone(), 0
    for i in range(len(c.questions)):
        span = sorted(c.new_answers[i])[0]
        pos = c.questions.final_answer_pos[i].item()
        if len(span) == 1 and i % 2 == 0:
            decoded[i, pos] = span[0]
            planted += 1
    assert planted and span_broadcast_rate(decoded, c) == pytest.approx(planted / len(c.questions))


def test_final_span_reads_after_the_separator_and_needs_an_eos():
    tokens = torch.tensor([1, 7, 8, 9, 5, 6, 2, 0])
    mask = torch.tensor([0, 0, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    assert final_span(tokens, mask) == (8, 9, 5, 6) and final_span(tokens, mask, sep=9) == (5, 6)
    assert final_span(torch.tensor([1, 7, 8, 9, 5, 6, 6, 0]), mask) is None  # no EOS: unfinished
    with pytest.raises(ValueError, match="one per question"):
        from toymodels.tasks import Examples
        SpanControl(Examples(tokens[None], mask[None]), (), None)


@pytest.mark.parametrize("field,value,match", [
    ("n_attributes", 7, "world.n_attributes=7"), ("max_steps", 4, "world.max_steps=4"),
    ("n_qtypes", 2, "world.n_qtypes=2"), ("max_entities", 3, "world.max_entities=3")])
def test_invalid_world_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        MathWorldConfig(**{field: value})


def test_invalid_task_and_expert_configs_name_the_field(pre):
    with pytest.raises(ValueError, match="task.fmt='cot'"):
        MathTaskConfig(fmt="cot")
    with pytest.raises(ValueError, match="experts.template='mixed'"):
        MathExpertConfig(template="mixed")
    with pytest.raises(ValueError, match=r"experts.n_fact_entities=7 .*needs 14 new entities.*allowed .*<= 6"):
        make_math_expert_set(pre, MathExpertConfig(n_fact_entities=7), np.random.default_rng(0))
