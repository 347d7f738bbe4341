"""The code DSL's programs in real languages, for a pretrained model (issue 10 item 4, the
pretrained half): syntax 1 is Python, syntax 2 a JavaScript array chain, and each program has an
English task description. All three are generated from one parsed :class:`Program`
(:mod:`toymodels.tasks.code_dsl`), one renderer each::

    steps even, add 2; sum
    python       sum(v + 2 for v in x if v % 2 == 0)
    javascript   x.filter(v => v % 2 === 0).map(v => v + 2).reduce((a, b) => a + b, 0)
    english      Keep the even numbers, add 2 to each number, then return their sum

Python fuses the element-wise ops (maps and filters) that follow one another into one list
comprehension, as a Python programmer writes them: a filter after a map tests the mapped value
(``[v + 2 for v in x if (v + 2) % 2 == 0]``); the other ops wrap the list (``sorted(..)``,
``..[::-1]``, ``..[:k]``, ``..[k:]``); ``sum`` of a comprehension is a generator expression.
JavaScript writes one call per op.

Both mean what :func:`~toymodels.tasks.code_dsl.execute` computes on the DSL's input domain,
lists of non-negative integers (``code_corpus.random_inputs``; every op keeps values
non-negative): JavaScript's ``v % 2 === 1`` and ``reduce(Math.max, 0)`` agree with the DSL there
(and Python's ``max(.., default=0)`` everywhere). Tests check it with restricted interpreters of
both texts (never ``eval`` or ``exec``). The ``min`` reducer is left out (:data:`REDUCERS`):
JavaScript has no one-expression idiom for "the minimum, or 0 of an empty list", and helper calls
(toy-only names) must be inlined first (:meth:`Program.inline`).
"""
from __future__ import annotations

from toymodels.tasks.code_dsl import Program

LANGUAGES: tuple[str, ...] = ("python", "javascript")
REDUCERS: tuple[str, ...] = ("sum", "max", "len")
ELEMENTWISE = ("add", "mul", "even", "odd", "gt")
COMMENT = {"python": "#", "javascript": "//"}
NAMES = {"python": "Python", "javascript": "JavaScript"}


def check_program(program: Program) -> Program:
    """``program`` if the real languages can write it, else a one-line ``ValueError``."""
    if not isinstance(program, Program):
        raise ValueError(f"program={program!r}: must be a code_dsl.Program")
    if any(op == "call" for op, _ in program.steps):
        raise ValueError(f"program {program}: has a helper call; inline it first (Program.inline)")
    if program.reducer is not None and program.reducer not in REDUCERS:
        raise ValueError(f"program reducer {program.reducer!r}: the real-language renderings take "
                         f"{', '.join(REDUCERS)} or None")
    return program


def to_python(program: Program) -> str:
    """One Python expression of ``x`` (module docstring)."""
    src, expr, conds = "x", None, []  # a pending comprehension [expr for v in src if conds], or none
    for op, k in check_program(program).steps:
        if op in ELEMENTWISE:
            e = expr or "v"
            if op == "add":
                expr = f"{e} + {k}"
            elif op == "mul":
                expr = f"({e}) * {k}" if "+" in e else f"{e} * {k}"
            else:
                expr = e
                term = e if e == "v" else f"({e})"
                conds.append({"even": f"{term} % 2 == 0", "odd": f"{term} % 2 == 1", "gt": f"{e} > {k}"}[op])
            continue
        if expr is not None:
            src, expr, conds = f"[{_comprehension(expr, conds, src)}]", None, []
        src = {"rev": f"{src}[::-1]", "sort": f"sorted({src})", "take": f"{src}[:{k}]", "drop": f"{src}[{k}:]"}[op]
    if program.reducer == "sum" and expr is not None:
        return f"sum({_comprehension(expr, conds, src)})"
    if expr is not None:
        src = f"[{_comprehension(expr, conds, src)}]"
    return {None: src, "sum": f"sum({src})", "max": f"max({src}, default=0)", "len": f"len({src})"}[program.reducer]


def _comprehension(expr: str, conds: list[str], src: str) -> str:
    return f"{expr} for v in {src}" + (f" if {' and '.join(conds)}" if conds else "")


JS_OPS = {"add": ".map(v => v + {k})", "mul": ".map(v => v * {k})", "even": ".filter(v => v % 2 === 0)",
          "odd": ".filter(v => v % 2 === 1)", "gt": ".filter(v => v > {k})", "rev": ".reverse()",
          "sort": ".sort((a, b) => a - b)", "take": ".slice(0, {k})", "drop": ".slice({k})"}
JS_REDUCERS = {None: "", "sum": ".reduce((a, b) => a + b, 0)", "max": ".reduce((a, b) => Math.max(a, b), 0)",
               "len": ".length"}


def to_javascript(program: Program) -> str:
    """One JavaScript expression of the array ``x``: a method chain, one call per op."""
    check_program(program)
    return "x" + "".join(JS_OPS[op].format(k=k) for op, k in program.steps) + JS_REDUCERS[program.reducer]


def _count(k: int, one: str, many: str) -> str:
    return one if k == 1 else many.format(k=k)


def _step_text(op: str, k: int) -> str:
    if op == "take":
        return _count(k, "keep the first number", "keep the first {k} numbers")
    if op == "drop":
        return _count(k, "remove the first number", "remove the first {k} numbers")
    return {"add": f"add {k} to each number", "mul": f"multiply each number by {k}", "even": "keep the even numbers",
            "odd": "keep the odd numbers", "gt": f"keep the numbers greater than {k}", "rev": "reverse the list",
            "sort": "sort the list in ascending order"}[op]


REDUCER_TEXT = {None: "return the list", "sum": "return their sum",
                "max": "return their maximum (0 if there are none)", "len": "return how many numbers are left"}


def describe(program: Program) -> str:
    """The task in English, one clause per op, e.g. "Keep the even numbers, add 2 to each
    number, then return their sum" (the list is ``x``; the prompt says so once)."""
    steps = [_step_text(op, k) for op, k in check_program(program).steps]
    text = ", ".join(steps) + ", then " + REDUCER_TEXT[program.reducer]
    return text[0].upper() + text[1:]


def render_language(program: Program, language: str) -> str:
    """``program`` in ``language`` (one of :data:`LANGUAGES`)."""
    if language == "python":
        return to_python(program)
    if language == "javascript":
        return to_javascript(program)
    raise ValueError(f"language={language!r}: must be one of {', '.join(LANGUAGES)}")
