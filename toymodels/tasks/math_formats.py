"""Token rows of the toy math problems (layouts in :mod:`toymodels.tasks.math_problems`).

A row is ``(question tokens, answer tokens)``; :func:`toymodels.tasks.knowledge.encode` pads rows
into :class:`Examples` whose answer mask marks the answer tokens (EOS included). The final answer
is the number just before EOS, so ``Examples.final_answer_pos`` is its last digit.
"""
from __future__ import annotations

from toymodels.tasks import Examples
from toymodels.tasks.knowledge import BOS, EOS, encode
from toymodels.tasks.math_problems import FORMATS, Format, MathTokenizer, MathWorld, Problem

Row = tuple[list[int], list[int]]


def fact_line(tok: MathTokenizer, e: int, a: int, v: int) -> list[int]:
    """``attr ent = v ;``: a stated fact and a worked solution's lookup line alike."""
    return [tok.attribute(a), tok.entity(e), tok.symbol("=")] + tok.number(v) + [tok.symbol(";")]


def step_line(tok: MathTokenizer, left: int, op: str, right: int, result: int) -> list[int]:
    """``left op right = result ;``"""
    return tok.number(left) + [tok.symbol(op)] + tok.number(right) + [tok.symbol("=")] + \
        tok.number(result) + [tok.symbol(";")]


def question(tok: MathTokenizer, p: Problem) -> list[int]:
    """``BOS [fact sentences] qtype ent.. [k , k ..] ?``"""
    out = [BOS] + [t for e, a, v in p.context for t in fact_line(tok, e, a, v)]
    out += [tok.qtype(p.qtype)] + [tok.entity(e) for e in p.entities]
    for j, c in enumerate(p.consts):
        out += ([tok.symbol(",")] if j else []) + tok.number(c)
    return out + [tok.symbol("?")]


def worked_solution(tok: MathTokenizer, p: Problem) -> list[int]:
    """Lookup lines for every needed fact, one line per step, then ``ANS v`` (no EOS)."""
    lines = [t for e, a, v in p.facts for t in fact_line(tok, e, a, v)]
    lines += [t for step in p.steps for t in step_line(tok, *step)]
    return lines + [tok.symbol("ANS")] + tok.number(p.answer)


def problem_row(tok: MathTokenizer, p: Problem, fmt: Format) -> Row:
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: must be one of {', '.join(FORMATS)}")
    answer = tok.number(p.answer) if fmt == "direct" else worked_solution(tok, p)
    return question(tok, p), answer + [EOS]


def atomic_row(tok: MathTokenizer, e: int, a: int, v: int) -> Row:
    """``BOS ent attr`` -> ``v EOS``: a fact outside any solution template."""
    return [BOS, tok.entity(e), tok.attribute(a)], tok.number(v) + [EOS]


def arith_row(tok: MathTokenizer, left: int, op: str, right: int, result: int) -> Row:
    """``BOS left op right =`` -> ``result EOS``."""
    return [BOS] + tok.number(left) + [tok.symbol(op)] + tok.number(right) + [tok.symbol("=")], \
        tok.number(result) + [EOS]


def problems_examples(world: MathWorld, problems: list[Problem], fmt: Format) -> Examples:
    return encode([problem_row(world.tokenizer, p, fmt) for p in problems])


def atomic_examples(world: MathWorld, facts: list[tuple[int, int]]) -> Examples:
    """``facts``: ``(entity, attribute)`` pairs of familiar or new entities (world values)."""
    return encode([atomic_row(world.tokenizer, e, a, int(world.values[e, a])) for e, a in facts])


def number_span(tok: MathTokenizer, v: int) -> tuple[int, ...]:
    """The final-answer span of a row whose answer is ``v`` (see :mod:`toymodels.tasks.family`)."""
    return tuple(tok.number(v))
