"""Rows, pretraining corpus and execution metric of the toy cross-lingual code family.

Row layouts (``answer`` = the scored positions, EOS included)::

    task, syntax A          BOS task LA   -> A-program EOS
    task, syntax B direct   BOS task LB   -> B-program EOS
    task, syntax B via A    BOS task LB   -> A-program ; B-program EOS   (fmt "via": write it in A, translate)
    helper definition       BOS h LA / LB -> the helper's two ops as a program on x, EOS
    translation             BOS src-program LA / LB -> the program in the other syntax, EOS

The pretraining corpus teaches a tiny base both languages: every familiar task in syntax A, all
but a ``heldout_frac`` share of them in syntax B (the held-out B rows are ``cross_test``: a task
known in A only, asked in B, the base's version of the composed question), every helper in both,
and ``n_translate`` random programs translated each way (``translate_test`` holds out others).
Familiar tasks are written with helper calls. New tasks and their programs never appear (the
translation programs avoid them; pinned by a test).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from torch import Tensor

from toymodels.config import Config, check_fields, counts
from toymodels.tasks import Examples
from toymodels.tasks.code_dsl import Program, execute, parse, render
from toymodels.tasks.code_world import CodeWorld, CodeWorldConfig, Style, make_code_world, random_program
from toymodels.tasks.knowledge import BOS, EOS, encode
from toymodels.tasks.family import final_spans

Format = Literal["direct", "via"]
FORMATS: tuple[str, ...] = ("direct", "via")
Row = tuple[list[int], list[int]]


@dataclass(frozen=True)
class CodeTaskConfig(Config):
    world: CodeWorldConfig = field(default_factory=CodeWorldConfig)
    fmt: Format = "direct"
    heldout_frac: float = 0.2
    n_translate: int = 600
    n_eval: int = 256

    def __post_init__(self):
        check_fields("task", self, {"fmt": (self.fmt in FORMATS, f"one of {', '.join(FORMATS)}"),
                                    "heldout_frac": (0.0 < self.heldout_frac < 1.0, "in (0, 1)")} |
                     counts(self, {"n_translate": 1, "n_eval": 1}))


def program_answer(world: CodeWorld, program: Program, syntax: str, fmt: Format) -> list[int]:
    """The answer tokens of a program asked for in ``syntax`` (EOS included)."""
    words = render(program, syntax)
    if syntax == "B" and fmt == "via":
        words = render(program, "A") + [";"] + words
    return world.tokenizer.encode(words) + [EOS]


def task_row(world: CodeWorld, task: int, syntax: str, style: Style, fmt: Format) -> Row:
    tok = world.tokenizer
    prompt = [BOS, tok.id(world.task_name(task)), tok.id(f"L{syntax}")]
    return prompt, program_answer(world, world.written(task, style), syntax, fmt)


def translate_row(world: CodeWorld, program: Program, source: str, target: str) -> Row:
    tok = world.tokenizer
    return [BOS] + tok.encode(render(program, source)) + [tok.id(f"L{target}")], \
        tok.encode(render(program, target)) + [EOS]


def helper_row(world: CodeWorld, h: int, syntax: str) -> Row:
    tok = world.tokenizer
    return [BOS, tok.id(f"h{h}"), tok.id(f"L{syntax}")], tok.encode(render(Program(world.helpers[h]), syntax)) + [EOS]


def task_examples(world: CodeWorld, tasks, syntax: str, style: Style, fmt: Format) -> Examples:
    return encode([task_row(world, int(i), syntax, style, fmt) for i in tasks])


@dataclass(frozen=True)
class CodePretraining:
    config: CodeTaskConfig
    world: CodeWorld
    train: Examples
    eval_sets: dict[str, Examples]
    cross_tasks: np.ndarray  # familiar tasks whose syntax-B row is held out
    translate_programs: tuple[Program, ...]
    translate_test_programs: tuple[Program, ...]


def _translation_programs(world: CodeWorld, n: int, rng: np.random.Generator) -> list[Program]:
    """``n`` distinct random programs (half around a helper), none a new task's (either style)."""
    cfg = world.config
    avoid = {p for i in world.new_tasks for p in (world.written(i, "call"), world.written(i, "inline"))}
    out: list[Program] = []
    for _ in range(100 * n):
        p = random_program(cfg, rng, int(rng.integers(cfg.n_helpers)) if rng.random() < 0.5 else None)
        if p not in avoid:
            avoid.add(p)
            out.append(p)
            if len(out) == n:
                return out
    raise ValueError(f"task.n_translate={n}: could not draw that many distinct programs; lower it")


def make_code_pretraining(cfg: CodeTaskConfig, rng: np.random.Generator) -> CodePretraining:
    world = make_code_world(cfg.world, rng)
    base = rng.permutation(np.array(world.base_tasks))
    n_cross = int(round(cfg.heldout_frac * len(base)))
    cross, rest = np.sort(base[:n_cross]), np.sort(base[n_cross:])
    programs = _translation_programs(world, cfg.n_translate + cfg.n_eval, rng)
    train_p, test_p = programs[:cfg.n_translate], programs[cfg.n_translate:]
    translations = lambda ps: encode([translate_row(world, p, s, t) for p in ps  # noqa: E731
                                      for s, t in (("A", "B"), ("B", "A"))])
    helpers = encode([helper_row(world, h, s) for h in range(cfg.world.n_helpers) for s in ("A", "B")])
    train = Examples.cat([task_examples(world, base, "A", "call", cfg.fmt),
                          task_examples(world, rest, "B", "call", cfg.fmt), helpers, translations(train_p)])
    n = cfg.n_eval
    eval_sets = {"task_A": task_examples(world, base[:n], "A", "call", cfg.fmt),
                 "task_B": task_examples(world, rest[:n], "B", "call", cfg.fmt),
                 "cross_test": task_examples(world, cross[:n], "B", "call", cfg.fmt),
                 "translate_test": translations(test_p)[:n], "helpers": helpers}
    return CodePretraining(cfg, world, train, eval_sets, cross, tuple(train_p), tuple(test_p))


def random_inputs(rng: np.random.Generator, n: int, max_len: int = 6, max_value: int = 9) -> list[list[int]]:
    """``n`` int lists of length ``0..max_len`` with values in ``[0, max_value]``."""
    return [[int(v) for v in rng.integers(0, max_value + 1, int(rng.integers(0, max_len + 1)))] for _ in range(n)]


def execution_matches(decoded: Tensor, examples: Examples, world: CodeWorld, gold: list[Program],
                      syntax: str, inputs: list[list[int]]) -> list[bool]:
    """Per row: the decoded final program (after ``;`` in a via answer) parses in ``syntax`` and
    gives the gold program's output on every input. A malformed or unfinished answer is wrong."""
    tok, out = world.tokenizer, []
    for span, program in zip(final_spans(decoded, examples, tok.id(";")), gold):
        try:
            parsed = parse(tok.decode(span), syntax) if span is not None else None
        except ValueError:
            parsed = None
        out.append(parsed is not None and all(execute(parsed, x, world.helpers) == execute(program, x, world.helpers)
                                              for x in inputs))
    return out


def execution_accuracy(decoded: Tensor, examples: Examples, world: CodeWorld, gold: list[Program],
                       syntax: str, inputs: list[list[int]]) -> float:
    """Share of rows whose decoded program computes what the gold program does on ``inputs``."""
    matches = execution_matches(decoded, examples, world, gold, syntax, inputs)
    return sum(matches) / len(matches) if matches else float("nan")
