"""The code DSL in real languages (toymodels/tasks/code_langs.py): Python and JavaScript texts mean
what the DSL's own evaluator computes, checked by restricted interpreters of the texts
(tests/code_lang_oracle.py, never eval/exec); the English descriptions name each program once;
malformed input raises a one-line ValueError."""
from __future__ import annotations

import numpy as np
import pytest

from tests.code_lang_oracle import run_javascript, run_python
from toymodels.tasks.code_corpus import random_inputs
from toymodels.tasks.code_dsl import LIST_OPS, Program, execute
from toymodels.tasks.code_langs import (LANGUAGES, REDUCERS, describe, render_language, to_javascript,
                                        to_python)
from toymodels.tasks.code_world import random_step


def random_programs(n: int = 400, seed: int = 0) -> list[Program]:
    """Distinct programs of 1-4 ops, every reducer and none."""
    rng, out = np.random.default_rng(seed), set()
    while len(out) < n:
        steps = tuple(random_step(rng) for _ in range(int(rng.integers(1, 5))))
        out.add(Program(steps, [None, *REDUCERS][int(rng.integers(len(REDUCERS) + 1))]))
    return sorted(out, key=repr)


PROGRAMS = random_programs()
INPUTS = random_inputs(np.random.default_rng(1), 25, max_len=8) + [[], [0], [1], [9, 9, 9, 9, 9, 9, 9, 9]]


def test_the_documented_example():
    p = Program((("even", 0), ("add", 2)), "sum")
    assert to_python(p) == "sum(v + 2 for v in x if v % 2 == 0)"
    assert to_javascript(p) == "x.filter(v => v % 2 === 0).map(v => v + 2).reduce((a, b) => a + b, 0)"
    assert describe(p) == "Keep the even numbers, add 2 to each number, then return their sum"


@pytest.mark.parametrize("steps,reducer,python,javascript", [
    pytest.param((("add", 2), ("even", 0)), None, "[v + 2 for v in x if (v + 2) % 2 == 0]",
                 "x.map(v => v + 2).filter(v => v % 2 === 0)", id="filter-after-map-tests-the-mapped-value"),
    pytest.param((("add", 1), ("mul", 3), ("gt", 4)), "len", "len([(v + 1) * 3 for v in x if (v + 1) * 3 > 4])",
                 "x.map(v => v + 1).map(v => v * 3).filter(v => v > 4).length", id="precedence"),
    pytest.param((("sort", 0), ("take", 2), ("odd", 0)), "max",
                 "max([v for v in sorted(x)[:2] if v % 2 == 1], default=0)",
                 "x.sort((a, b) => a - b).slice(0, 2).filter(v => v % 2 === 1).reduce((a, b) => Math.max(a, b), 0)",
                 id="list-ops-wrap"),
    pytest.param((("mul", 2), ("rev", 0), ("drop", 1)), None, "[v * 2 for v in x][::-1][1:]",
                 "x.map(v => v * 2).reverse().slice(1)", id="comprehension-closed-by-a-list-op"),
])
def test_renderings_by_hand(steps, reducer, python, javascript):
    p = Program(steps, reducer)
    assert (to_python(p), to_javascript(p)) == (python, javascript)


def test_every_op_and_reducer_is_exercised():
    assert {op for p in PROGRAMS for op, _ in p.steps} == set(LIST_OPS)
    assert {p.reducer for p in PROGRAMS} == {None, *REDUCERS}


@pytest.mark.parametrize("language,interpret", [("python", run_python), ("javascript", run_javascript)])
def test_both_languages_mean_what_the_dsl_computes(language, interpret):
    for p in PROGRAMS:
        text = render_language(p, language)
        for x in INPUTS:
            assert interpret(text, x) == execute(p, x, ()), (p, text, x)


@pytest.mark.parametrize("language,interpret,wrong", [
    pytest.param("python", run_python, ("% 2 == 0", "% 2 == 1"), id="python-parity"),
    pytest.param("python", run_python, ("[::-1]", ""), id="python-no-reverse"),
    pytest.param("javascript", run_javascript, ("a - b", "b - a"), id="js-sort-order"),
    pytest.param("javascript", run_javascript, ("v > ", "v === "), id="js-gt"),
])
def test_the_meaning_check_catches_a_wrong_rendering(language, interpret, wrong):
    """A planted rendering error: some program changes meaning, and the check sees it."""
    caught = 0
    for p in PROGRAMS:
        text = render_language(p, language)
        if wrong[0] in text:
            bad = text.replace(wrong[0], wrong[1])
            caught += any(interpret(bad, x) != execute(p, x, ()) for x in INPUTS)
    assert caught > 5


def test_texts_and_descriptions_name_each_program_once():
    for render in (to_python, to_javascript, describe):
        assert len({render(p) for p in PROGRAMS}) == len(PROGRAMS), render.__name__


def test_descriptions_count_in_words():
    assert describe(Program((("take", 1), ("drop", 3)))) == \
        "Keep the first number, remove the first 3 numbers, then return the list"
    assert describe(Program((("drop", 1), ("take", 2)), "max")) == \
        "Remove the first number, keep the first 2 numbers, then return their maximum (0 if there are none)"


@pytest.mark.parametrize("program,match", [
    pytest.param(Program((("call", 0),)), "helper call; inline it first", id="helper-call"),
    pytest.param(Program((("add", 1),), "min"), "reducer 'min'", id="min-reducer"),
    pytest.param("x | evens", "must be a code_dsl.Program", id="not-a-program"),
])
def test_malformed_programs_raise_one_line(program, match):
    for render in (to_python, to_javascript, describe):
        with pytest.raises(ValueError, match=match) as info:
            render(program)
        assert "\n" not in str(info.value)


def test_unknown_language_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="language='cobol': must be one of python, javascript"):
        render_language(PROGRAMS[0], "cobol")
    with pytest.raises(ValueError, match=r"argument must be in \[2, 3\]"):
        Program((("mul", 7),))
    assert LANGUAGES == ("python", "javascript")


@pytest.mark.parametrize("text", ["__import__('os').getcwd()", "x.pop()", "[v for v in x for w in x]",
                                  "(lambda: 1)()", "open('f')"])
def test_the_python_oracle_is_restricted(text):
    with pytest.raises(ValueError, match="unsupported"):
        run_python(text, [1, 2])


@pytest.mark.parametrize("text", ["x.forEach(v => v)", "y.map(v => v)", "x.map(v => v)!"])
def test_the_javascript_oracle_is_restricted(text):
    with pytest.raises(ValueError):
        run_javascript(text, [1, 2])
