"""The toy math world's problems in English, for a pretrained LM (issue 10 item 2, the natural
language half). One source of truth: the world, question types, values and steps are those of
:mod:`toymodels.tasks.math_problems`; this module only writes them out.

Entities get English names: familiar and context entities real object nouns, new entities
(the facts adapter's, distractors, control subjects) made-up words, so no fact about them can
come from pretraining. Each attribute has a fact sentence and a noun phrase::

    fact sentence   A notebook costs 7 dollars.            (price)
    noun phrase     the price of a notebook in dollars

A question writes a question type's left-folded program step by step, after the sentences its
text states (given facts and distractors)::

    A pen costs 2 dollars. Take the price of a notebook in dollars, multiply by 3, then add the
    price of a pen in dollars. What number do you get?
      direct answer   " The answer is 23."
      worked answer   " A notebook costs 7 dollars. A pen costs 2 dollars. 7 * 3 = 21. 21 + 2 = 23.
                       The answer is 23."

The worked solution's lookup lines are the fact sentences, word for word: the solution template
the facts and procedure adapters may share. Outside it (the ``different`` facts template) a
fact is a question and its number: ``What is the price of a zorble in dollars?`` -> `` 7.``.
"""
from __future__ import annotations

import re

from toymodels.tasks.math_problems import ATTRIBUTES, FORMATS, Format, MathWorld, Problem

REAL_NAMES = ("notebook", "pen", "lamp", "chair", "basket", "kettle", "candle", "shovel", "blanket", "ladder",
              "bucket", "wallet", "helmet", "pillow", "teapot", "hammer", "mirror", "saddle", "violin", "rocket",
              "jacket", "sofa", "tent", "bottle")
NEW_NAMES = ("zorble", "blicket", "fendle", "glorp", "snerd", "flimp", "quarn", "vosk", "trindle", "mupple",
             "plook", "greeb", "yarvel", "dorpin", "sniv", "kelpo", "frambo", "lutz", "wibble", "narp", "torvak",
             "zindle", "pokka", "brell")
SENTENCES = {"price": "A {e} costs {v} dollars.", "count": "A box holds {v} {e}s.",
             "distance": "The {e} shop is {v} miles away.", "weight": "A {e} weighs {v} pounds.",
             "age": "The oldest {e} is {v} years old.", "speed": "A {e} travels {v} miles per hour."}
PHRASES = {"price": "the price of a {e} in dollars", "count": "the number of {e}s in a box",
           "distance": "the distance to the {e} shop in miles", "weight": "the weight of a {e} in pounds",
           "age": "the age of the oldest {e} in years", "speed": "the speed of a {e} in miles per hour"}
STEPS = {"+": "add {x}", "-": "subtract {x}", "*": "multiply by {x}"}
ASK = "What number do you get?"
FINAL = "The answer is {v}."
FINAL_RE = re.compile(r"The answer is (\d+)")
FINAL_DONE_RE = re.compile(r"The answer is \d+\D")  # the number is complete: generation may stop
assert set(SENTENCES) == set(PHRASES) == set(ATTRIBUTES)


def check_names(world: MathWorld) -> None:
    """``ValueError`` when the world has more entities than this module has names for."""
    cfg = world.config
    if cfg.n_entities + cfg.n_context > len(REAL_NAMES):
        raise ValueError(f"world.n_entities + n_context = {cfg.n_entities + cfg.n_context}: at most "
                         f"{len(REAL_NAMES)} in natural language (real object names)")
    if cfg.n_new > len(NEW_NAMES):
        raise ValueError(f"world.n_new={cfg.n_new}: at most {len(NEW_NAMES)} in natural language (made-up names)")


def name(world: MathWorld, e: int) -> str:
    """The English name of entity ``e`` (familiar and context: real nouns; new: made-up words)."""
    cfg = world.config
    real = cfg.n_entities + cfg.n_context
    return REAL_NAMES[e] if e < real else NEW_NAMES[e - real]


def fact_sentence(world: MathWorld, e: int, a: int, v: int) -> str:
    """``A notebook costs 7 dollars.``: a stated fact and a worked solution's lookup line alike."""
    return SENTENCES[ATTRIBUTES[a]].format(e=name(world, e), v=v)


def phrase(world: MathWorld, e: int, a: int) -> str:
    return PHRASES[ATTRIBUTES[a]].format(e=name(world, e))


def question(world: MathWorld, p: Problem) -> str:
    """The stated sentences, then the program step by step, then :data:`ASK`."""
    qt = world.qtypes[p.qtype]
    leaf = lambda kind, i, s: phrase(world, p.entities[s], i) if kind == "fact" else str(p.consts[i])  # noqa: E731
    steps = [STEPS[op].format(x=leaf(*right)) for op, right in zip(qt.ops, qt.leaves[1:])]
    stated = " ".join(fact_sentence(world, *f) for f in p.context)
    ask = f"Take {leaf(*qt.leaves[0])}, " + ", then ".join(steps) + f". {ASK}"
    return f"{stated} {ask}" if stated else ask


def worked(world: MathWorld, p: Problem) -> str:
    """Lookup line per needed fact, one line per step, then the final line."""
    lines = [fact_sentence(world, *f) for f in p.facts] + [f"{a} {op} {b} = {r}." for a, op, b, r in p.steps]
    return " ".join(lines + [FINAL.format(v=p.answer)])


def problem_pair(world: MathWorld, p: Problem, fmt: Format) -> tuple[str, str]:
    """``(prompt, answer)``; the answer starts with a space (tokenised apart from the prompt)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: must be one of {', '.join(FORMATS)}")
    return question(world, p), " " + (worked(world, p) if fmt == "worked" else FINAL.format(v=p.answer))


def atomic_pair(world: MathWorld, e: int, a: int, v: int) -> tuple[str, str]:
    """``What is the price of a zorble in dollars?`` -> `` 7.``: a fact outside the solution template."""
    return f"What is {phrase(world, e, a)}?", f" {v}."


def few_shot(shots: list[tuple[str, str]], prompt: str) -> str:
    """Solved ``(prompt, answer)`` examples, a blank line apart, then ``prompt``."""
    return "".join(f"{q}{a}\n\n" for q, a in shots) + prompt


def final_answer(text: str) -> int | None:
    """The number of the first ``The answer is N`` in ``text``; None if there is none."""
    m = FINAL_RE.search(text)
    return int(m.group(1)) if m else None
