"""Toy cross-lingual code: the DSL's two syntaxes, their interpreters against independent oracles,
translation, the pretraining corpus, expert sets, the "reusable code" condition and metrics.

The oracles here do not use the module's parser or evaluator: syntax A is rewritten word by word
into a Python expression (A is nested function application, so Python's own parser nests it) and
evaluated by ``eval``; syntax B is folded stage by stage with its own table."""
import numpy as np
import pytest
import torch

from toymodels.tasks.code_corpus import (CodeTaskConfig, execution_accuracy, execution_matches,
                                         make_code_pretraining, random_inputs)
from toymodels.tasks.code_dsl import Program, apply_op, execute, parse, reduce_list, render, translate
from toymodels.tasks.code_experts import CodeExpertConfig, make_code_expert_set
from toymodels.tasks.code_world import CodeWorldConfig
from toymodels.tasks.knowledge import BOS, EOS, PAD
from toymodels.tasks.family import final_span, span_broadcast_rate

WORLD = CodeWorldConfig(n_base_tasks=30, n_new_tasks=24, n_helpers=3)

A_PY = {("map", "(", "add"): "(lambda E: [v + {k} for v in E])",
        ("map", "(", "mul"): "(lambda E: [v * {k} for v in E])",
        ("filter", "(", "even"): "(lambda E: [v for v in E if v % 2 == 0])",
        ("filter", "(", "odd"): "(lambda E: [v for v in E if v % 2 == 1])",
        ("filter", "(", "gt"): "(lambda E: [v for v in E if v > {k}])",
        ("reverse",): "(lambda E: list(reversed(E)))", ("sort",): "sorted",
        ("take",): "(lambda E: E[:{k}])", ("drop",): "(lambda E: E[{k}:])",
        ("sum",): "sum", ("max",): "(lambda E: max(E, default=0))", ("min",): "(lambda E: min(E, default=0))",
        ("len",): "len"}
B_PY = {"plus": lambda E, k: [v + k for v in E], "times": lambda E, k: [v * k for v in E],
        "evens": lambda E, k: [v for v in E if not v % 2], "odds": lambda E, k: [v for v in E if v % 2],
        "above": lambda E, k: [v for v in E if v > k], "flip": lambda E, k: E[::-1], "order": lambda E, k: sorted(E),
        "first": lambda E, k: E[:k], "skip": lambda E, k: E[k:], "total": lambda E, k: sum(E),
        "top": lambda E, k: max(E) if E else 0, "bottom": lambda E, k: min(E) if E else 0, "count": lambda E, k: len(E)}


def oracle_a(words: list[str], x: list[int], helpers) -> list[int] | int:
    """Rewrite syntax A into Python source and ``eval`` it."""
    out, i = [], 0
    while i < len(words):
        w = words[i]
        if w == "x":
            out.append(repr(x))
            i += 1
        elif w.startswith("h") and w[1:].isdigit():
            ops = helpers[int(w[1:])]
            out.append(f"(lambda E: oracle_steps({ops!r}, E))")
            i += 1
        elif w in ("(", ")"):
            out.append(w)
            i += 1
        else:
            key = next(k for k in A_PY if tuple(words[i:i + len(k)]) == k)
            i += len(key)
            k = ""
            if i < len(words) and words[i].isdigit():
                k, i = words[i], i + 1
            if key[0] in ("map", "filter"):
                assert words[i] == ")"
                i += 1
            out.append(A_PY[key].format(k=k))
    return eval(" ".join(out), {"oracle_steps": oracle_steps, "sorted": sorted, "sum": sum, "len": len})


def oracle_steps(ops, xs):
    """A helper's ops through the syntax-B table (independent of the module's apply_op)."""
    names = {"add": "plus", "mul": "times", "even": "evens", "odd": "odds", "gt": "above", "rev": "flip",
             "sort": "order", "take": "first", "drop": "skip"}
    for op, k in ops:
        xs = B_PY[names[op]](xs, k)
    return xs


def oracle_b(words: list[str], x: list[int], helpers) -> list[int] | int:
    stages = " ".join(words).split(" | ")
    assert stages[0] == "x"
    value = x
    for stage in stages[1:]:
        name, *arg = stage.split(" ")
        value = oracle_steps(helpers[int(name[1:])], value) if name.startswith("h") else \
            B_PY[name](value, int(arg[0]) if arg else 0)
    return value


@pytest.fixture(scope="module")
def pre():
    return make_code_pretraining(CodeTaskConfig(world=WORLD, fmt="direct", n_translate=120, n_eval=40),
                                 np.random.default_rng(0))


@pytest.fixture(scope="module")
def via():
    return make_code_pretraining(CodeTaskConfig(world=WORLD, fmt="via", n_translate=120, n_eval=40),
                                 np.random.default_rng(0))


def experts(pre, style="call", seed=1, **kw):
    return make_code_expert_set(pre, CodeExpertConfig(n_tasks=6, style=style, n_control=20, **kw),
                                np.random.default_rng(seed))


@pytest.mark.parametrize("op,arg,xs,expected", [
    ("add", 2, [1, 5], [3, 7]), ("mul", 3, [0, 2], [0, 6]), ("even", 0, [1, 2, 3, 4], [2, 4]),
    ("odd", 0, [1, 2, 3, 4], [1, 3]), ("gt", 2, [1, 2, 3, 4], [3, 4]), ("rev", 0, [1, 2, 3], [3, 2, 1]),
    ("sort", 0, [3, 1, 2], [1, 2, 3]), ("take", 2, [5, 6, 7], [5, 6]), ("drop", 2, [5, 6, 7], [7])])
def test_each_list_op_does_what_the_docstring_says(op, arg, xs, expected):
    assert apply_op(op, arg, xs) == expected


def test_reducers_and_empty_lists():
    assert [reduce_list(r, [3, 1, 2]) for r in ("sum", "max", "min", "len")] == [6, 3, 1, 3]
    assert [reduce_list(r, []) for r in ("sum", "max", "min", "len")] == [0, 0, 0, 0]


def test_the_documented_example_renders_and_runs_in_both_syntaxes():
    p = Program((("even", 0), ("add", 2)), "sum")
    assert " ".join(render(p, "A")) == "sum ( map ( add 2 ) ( filter ( even ) ( x ) ) )"
    assert " ".join(render(p, "B")) == "x | evens | plus 2 | total"
    assert execute(p, [1, 2, 3, 4], ()) == 10


def all_programs(world, pre):
    return [world.written(i, s) for i in range(len(world.programs)) for s in ("call", "inline")] + \
        list(pre.translate_programs) + list(pre.translate_test_programs)


def test_both_syntaxes_compute_what_independent_oracles_compute(pre):
    world, rng = pre.world, np.random.default_rng(3)
    inputs = random_inputs(rng, 12) + [[], [0], [9, 9, 9, 9, 9, 9]]
    for p in all_programs(world, pre):
        a, b = render(p, "A"), render(p, "B")
        for x in inputs:
            want = execute(p, x, world.helpers)
            assert oracle_a(a, x, world.helpers) == want == oracle_b(b, x, world.helpers), (a, b, x)


def test_parse_inverts_render_and_translation_is_a_bijection_on_the_tasks(pre):
    world = pre.world
    programs = all_programs(world, pre)
    for p in programs:
        for syntax in ("A", "B"):
            assert parse(render(p, syntax), syntax) == p
    for style in ("call", "inline"):
        a_texts = [tuple(render(world.written(i, style), "A")) for i in range(len(world.programs))]
        b_texts = [tuple(translate(list(a), "A", "B")) for a in a_texts]
        assert len(set(a_texts)) == len(set(b_texts)) == len(world.programs)  # injective on the tasks
        assert [tuple(translate(list(b), "B", "A")) for b in b_texts] == a_texts  # and inverted by B -> A


@pytest.mark.parametrize("text,syntax", [
    ("x |", "B"), ("| x", "B"), ("x | total | evens", "B"), ("x | plus", "B"), ("x | plus 12", "B"),
    ("x | times 7", "B"), ("x evens", "B"), ("sum ( x", "A"), ("map ( add 2 ) x", "A"), ("x )", "A"),
    ("filter ( even ) ( x", "A"), ("sum ( sum ( x ) )", "A"), ("map ( add ) ( x )", "A"), ("", "A"), ("", "B"),
    ("x | evens", "A"), ("filter ( even ) ( x )", "B")])
def test_parse_rejects_malformed_programs(text, syntax):
    with pytest.raises(ValueError, match=f"not a syntax-{syntax} program"):
        parse(text.split(" ") if text else [], syntax)


def test_truncated_programs_never_parse(pre):
    for p in pre.world.programs:
        for syntax in ("A", "B"):
            words = render(p, syntax)
            for cut in range(1, len(words)):
                try:
                    got = parse(words[:cut], syntax)
                except ValueError:
                    continue
                assert syntax == "B" and got != p  # a B prefix at a stage boundary is a shorter program


def test_inline_and_call_styles_compute_the_same_and_differ_in_text(pre):
    world, inputs = pre.world, random_inputs(np.random.default_rng(4), 10)
    for i in world.new_tasks:
        call, inline = world.written(i, "call"), world.written(i, "inline")
        assert world.uses_helper(i) and call != inline
        assert all(execute(call, x, world.helpers) == execute(inline, x, world.helpers) for x in inputs)
        assert not any(w.startswith("h") for w in render(inline, "A"))


def test_pretraining_rows_layout_and_what_it_never_shows(pre, via):
    world, tok = pre.world, pre.world.tokenizer
    seen = set(pre.train.tokens.unique().tolist())
    assert not {tok.id(world.task_name(i)) for i in world.new_tasks} & seen
    new_programs = {world.written(i, s) for i in world.new_tasks for s in ("call", "inline")}
    assert not new_programs & set(pre.translate_programs + pre.translate_test_programs)
    rows = lambda ex: {tuple(t for t in r.tolist() if t != PAD) for r in ex.tokens}  # noqa: E731
    assert not rows(pre.eval_sets["cross_test"]) & rows(pre.train)
    assert not rows(pre.eval_sets["translate_test"]) & rows(pre.train)
    assert len(pre.cross_tasks) == round(0.2 * WORLD.n_base_tasks)
    for i in pre.cross_tasks:  # held out in B, trained in A
        assert (BOS, tok.id(world.task_name(i)), tok.id("LA"), *tok.encode(render(world.programs[i], "A")), EOS) \
            in rows(pre.train)
    # direct vs via: a syntax-B answer is "B EOS" or "A ; B EOS"; final spans both read the B program
    for ex_d, ex_v in ((pre.eval_sets["cross_test"], via.eval_sets["cross_test"]),):
        for i in range(len(ex_d)):
            d = ex_d.tokens[i][ex_d.answer_mask[i]].tolist()
            v = ex_v.tokens[i][ex_v.answer_mask[i]].tolist()
            semi = v.index(tok.id(";"))
            assert v[semi + 1:] == d and tok.decode(v[:semi]) == render(parse(tok.decode(d[:-1]), "B"), "A")
            assert final_span(ex_v.tokens[i], ex_v.answer_mask[i], tok.id(";")) == tuple(d[:-1])


def test_rows_are_in_vocab_and_masks_mark_exactly_the_answer(pre, via):
    for corpus in (pre, via):
        sets = [corpus.train, *corpus.eval_sets.values()]
        for style in ("call", "inline"):
            es = experts(corpus, style)
            sets += [*es.train.values(), *es.probes.values(), *(c.questions for c in es.controls.values())]
        for ex in sets:
            assert ex.tokens.min() >= 0 and ex.tokens.max() < corpus.world.tokenizer.d_vocab
            n = (ex.tokens != PAD).sum(1)
            pos = torch.arange(ex.tokens.shape[1])
            assert torch.equal(ex.tokens != PAD, pos < n[:, None]) and (ex.tokens[:, 0] == BOS).all()
            start = ex.answer_mask.int().argmax(1)
            assert torch.equal(ex.answer_mask, (pos >= start[:, None]) & (pos < n[:, None]))
            assert (ex.tokens.gather(1, (n - 1)[:, None]) == EOS).all() and ((ex.tokens == EOS).sum(1) == 1).all()
            assert torch.equal(ex.final_answer_pos, n - 2)


def test_generation_is_deterministic_per_seed(pre):
    again = make_code_pretraining(CodeTaskConfig(world=WORLD, n_translate=120, n_eval=40), np.random.default_rng(0))
    other = make_code_pretraining(CodeTaskConfig(world=WORLD, n_translate=120, n_eval=40), np.random.default_rng(1))
    assert torch.equal(pre.train.tokens, again.train.tokens) and pre.world.programs == again.world.programs
    assert pre.world.programs != other.world.programs
    a, b = experts(pre), experts(again)
    assert all(torch.equal(a.train[k].tokens, b.train[k].tokens) for k in a.train)
    assert not np.array_equal(experts(pre, seed=2).tasks["semantics"], a.tasks["semantics"])


def test_expert_sets_are_disjoint_and_composed_is_semantics_in_syntax_b(pre):
    world, tok = pre.world, pre.world.tokenizer
    es = experts(pre, n_distractors=1)
    assert es.experts == ["semantics", "syntax", "composed", "D0"]
    sets = [set(es.tasks[k].tolist()) for k in ("semantics", "syntax", "D0")]
    assert sum(map(len, sets)) == len(set().union(*sets)) == 18 and set().union(*sets) <= set(world.new_tasks)
    assert np.array_equal(es.tasks["composed"], es.tasks["semantics"])
    lang = lambda ex: set(ex.tokens[:, 2].tolist())  # noqa: E731
    assert lang(es.train["semantics"]) == lang(es.train["D0"]) == {tok.id("LA")}
    assert lang(es.train["syntax"]) == lang(es.composed) == {tok.id("LB")}
    rows = lambda ex: {tuple(r.tolist()) for r in ex.tokens}  # noqa: E731
    for name in ("semantics", "syntax", "D0"):
        assert not rows(es.composed) & rows(es.train[name])
    assert not set(es.train["syntax"].tokens[:, 1].tolist()) & set(es.composed.tokens[:, 1].tolist())


def helper_tokens(tok, ex) -> set[int]:
    ids = {tok.id(w) for w in tok.words if w.startswith("h") and w[1:].isdigit()}
    return set(ex.tokens[ex.answer_mask].tolist()) & ids


def test_reusable_code_condition_shares_helper_calls_and_keeps_the_semantics(pre):
    tok, inputs = pre.world.tokenizer, random_inputs(np.random.default_rng(5), 10)
    call, inline = experts(pre, "call"), experts(pre, "inline")
    for name in call.tasks:
        assert np.array_equal(call.tasks[name], inline.tasks[name])  # same tasks in both conditions
        for p, q in zip(call.gold[name], inline.gold[name]):
            assert p != q and all(execute(p, x, pre.world.helpers) == execute(q, x, pre.world.helpers)
                                  for x in inputs)
    shared = helper_tokens(tok, call.train["semantics"])
    assert shared and shared <= helper_tokens(tok, call.train["syntax"])  # the bridge between the datasets
    assert all(not helper_tokens(tok, ex) for ex in inline.train.values())


def test_controls_exclude_the_new_programs_and_broadcast_counts_them(via):
    es = experts(via)
    tok = via.world.tokenizer
    for name, c in es.controls.items():
        assert len(c.questions) > 5
        assert span_broadcast_rate(c.questions.tokens, c) == 0.0
        own = {final_span(es.train[name].tokens[i], es.train[name].answer_mask[i], c.sep)
               for i in range(len(es.train[name]))}
        assert own == set(c.new_answers[0])
    # plant: the composed control answered with a composed program (the B part after ";")
    c = es.controls["composed"]
    program = es.composed.tokens[0][es.composed.answer_mask[0]].tolist()
    planted = torch.full((len(c.questions), 3 + len(program)), PAD)
    planted[:, :3] = c.questions.tokens[:, :3]
    planted[:, 3:] = torch.tensor(program)
    from toymodels.tasks import Examples
    control = type(c)(Examples(planted, torch.arange(planted.shape[1]).expand_as(planted) >= 3),
                      c.new_answers, tok.id(";"))
    assert span_broadcast_rate(planted, control) == 1.0


def test_execution_metric_accepts_equivalent_programs_and_rejects_wrong_or_malformed(pre):
    world, tok = pre.world, pre.world.tokenizer
    es = experts(pre, "call")
    ex, gold = es.composed, es.gold["composed"]
    inputs = random_inputs(np.random.default_rng(6), 16)
    assert execution_accuracy(ex.tokens, ex, world, gold, "B", inputs) == 1.0
    # the inline program is another text with the same outputs: exact match fails, execution passes
    inline = experts(pre, "inline").composed
    assert not torch.equal(inline.tokens, ex.tokens)
    assert execution_accuracy(inline.tokens, inline, world, gold, "B", inputs) == 1.0
    # another task's program: wrong wherever the outputs differ; a malformed answer: wrong
    shifted = execution_matches(ex.tokens.roll(1, 0), ex, world, gold, "B", inputs)
    differs = [any(execute(gold[i - 1], x, world.helpers) != execute(gold[i], x, world.helpers) for x in inputs)
               for i in range(len(gold))]
    assert shifted == [not d for d in differs] and any(differs)
    broken = ex.tokens.clone()
    broken[ex.answer_mask & (broken == tok.id("|"))] = tok.id("x")
    assert execution_accuracy(broken, ex, world, gold, "B", inputs) < 1.0
    assert execution_matches(broken, ex, world, gold, "B", inputs) == [tok.id("|") not in r[m].tolist()
                                                                       for r, m in zip(ex.tokens, ex.answer_mask)]


def test_invalid_configs_name_the_field(pre):
    with pytest.raises(ValueError, match="world.max_ops=5"):
        CodeWorldConfig(max_ops=5)
    with pytest.raises(ValueError, match="task.fmt='cot'"):
        CodeTaskConfig(fmt="cot")
    with pytest.raises(ValueError, match="experts.style='shared'"):
        CodeExpertConfig(style="shared")
    with pytest.raises(ValueError, match=r"experts.n_tasks=9 .*needs 27 new tasks.*allowed n_tasks <= 8"):
        make_code_expert_set(pre, CodeExpertConfig(n_tasks=9, n_distractors=1), np.random.default_rng(0))
