"""Tasks of the toy cross-lingual code family (issue 10 item 4): task names bound to programs of
:mod:`toymodels.tasks.code_dsl`, the shared helper snippets, and the tokenizer.

A task is named by one opaque token (familiar ``f*``, new ``t*``), deliberately not by a
compositional description: a description built from op words would let a base translate it
straight into either syntax, leaving nothing task-specific for the "semantics" adapter to hold.
What a task computes is a fact about its name, as a fact about an entity in the two-hop task.

Every new task, and a ``helper_frac`` share of the familiar ones, is built around one helper
snippet: ``[op] helper [op]`` (each outer op present with probability 1/2); the others are plain
(``min_ops..max_ops`` ops, never containing a helper's ops in a row). A task's program holds the
helper as a call; :meth:`CodeWorld.written` gives it in a *style*: ``call`` (``h2 ( x )`` /
``x | h2``) or ``inline`` (the helper's ops written out). Inline programs are distinct across
tasks, so no two tasks compute the same thing by construction of their text.

Vocabulary (ids in this order)::

    PAD BOS EOS | 0-9 | x LA LB ; | A words | B words | h* | f* | t*
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from toymodels.config import Config, check_fields, counts
from toymodels.tasks.code_dsl import A_WORDS, ARG_RANGES, B_WORDS, DIGITS, LIST_OPS, REDUCERS, Program, Step
from toymodels.tasks.knowledge import SPECIALS

Style = Literal["call", "inline"]
STYLES: tuple[str, ...] = ("call", "inline")
MARKERS = ("x", "LA", "LB", ";")  # the input, "write it in syntax A / B", the worked-answer separator


@dataclass(frozen=True)
class CodeWorldConfig(Config):
    n_base_tasks: int = 60
    n_new_tasks: int = 40
    n_helpers: int = 4
    min_ops: int = 1
    max_ops: int = 3
    helper_frac: float = 0.5
    reducer_prob: float = 0.5

    def __post_init__(self):
        check_fields("world", self, counts(self, {"n_base_tasks": 2, "n_new_tasks": 2, "n_helpers": 1, "min_ops": 1,
                                                  "max_ops": 1}))
        check_fields("world", self, {
            "n_helpers": (self.n_helpers <= 10, "<= 10 (one digit names)"),
            "min_ops": (self.min_ops <= self.max_ops, "<= max_ops"), "max_ops": (self.max_ops <= 4, "<= 4"),
            "helper_frac": (0.0 <= self.helper_frac <= 1.0, "in [0, 1]"),
            "reducer_prob": (0.0 <= self.reducer_prob <= 1.0, "in [0, 1]")})


@dataclass(frozen=True)
class CodeTokenizer:
    n_helpers: int
    n_base_tasks: int
    n_new_tasks: int

    @property
    def words(self) -> tuple[str, ...]:
        return (SPECIALS + DIGITS + MARKERS + A_WORDS + B_WORDS + tuple(f"h{i}" for i in range(self.n_helpers))
                + tuple(f"f{i}" for i in range(self.n_base_tasks)) + tuple(f"t{i}" for i in range(self.n_new_tasks)))

    @property
    def d_vocab(self) -> int:
        return len(self.words)

    def encode(self, words: list[str]) -> list[int]:
        index = {w: i for i, w in enumerate(self.words)}
        missing = [w for w in words if w not in index]
        if missing:
            raise ValueError(f"words {missing}: not in the code vocabulary")
        return [index[w] for w in words]

    def decode(self, tokens) -> list[str]:
        return [self.words[int(t)] for t in tokens if int(t) != SPECIALS.index("PAD")]

    def id(self, word: str) -> int:
        return self.encode([word])[0]


@dataclass(frozen=True)
class CodeWorld:
    """``programs[i]``: task ``i``'s program with helper calls (familiar tasks first, then new);
    ``helpers[h]``: helper ``h``'s two ops."""

    config: CodeWorldConfig
    tokenizer: CodeTokenizer
    helpers: tuple[tuple[Step, ...], ...]
    programs: tuple[Program, ...]

    @property
    def base_tasks(self) -> range:
        return range(self.config.n_base_tasks)

    @property
    def new_tasks(self) -> range:
        return range(self.config.n_base_tasks, len(self.programs))

    def task_name(self, i: int) -> str:
        n = self.config.n_base_tasks
        return f"f{i}" if i < n else f"t{i - n}"

    def uses_helper(self, i: int) -> bool:
        return any(op == "call" for op, _ in self.programs[i].steps)

    def written(self, i: int, style: Style) -> Program:
        if style not in STYLES:
            raise ValueError(f"style={style!r}: must be one of {', '.join(STYLES)}")
        return self.programs[i] if style == "call" else self.programs[i].inline(self.helpers)


def random_step(rng: np.random.Generator) -> Step:
    op = str(LIST_OPS[int(rng.integers(len(LIST_OPS)))])
    lo, hi = ARG_RANGES.get(op, (0, 0))
    return op, int(rng.integers(lo, hi + 1))


def random_program(cfg: CodeWorldConfig, rng: np.random.Generator, helper: int | None) -> Program:
    """Plain (``helper=None``) or ``[op] call(helper) [op]``, with a reducer w.p. ``reducer_prob``."""
    if helper is None:
        steps = [random_step(rng) for _ in range(int(rng.integers(cfg.min_ops, cfg.max_ops + 1)))]
    else:
        outer = lambda: [random_step(rng)] * (rng.random() < 0.5)  # noqa: E731
        steps = outer() + [("call", helper)] + outer()
    reducer = str(REDUCERS[int(rng.integers(len(REDUCERS)))]) if rng.random() < cfg.reducer_prob else None
    return Program(tuple(steps), reducer)


def contains_helper(program: Program, helpers) -> bool:
    """Whether some helper's ops appear in a row in the inlined ``program``."""
    steps = program.inline(helpers).steps
    return any(steps[i:i + len(h)] == tuple(h) for h in helpers for i in range(len(steps)))


def make_code_world(cfg: CodeWorldConfig, rng: np.random.Generator) -> CodeWorld:
    helpers: list[tuple[Step, ...]] = []
    while len(helpers) < cfg.n_helpers:
        h = (random_step(rng), random_step(rng))
        if h[0][0] != h[1][0] and h not in helpers:
            helpers.append(h)
    programs: list[Program] = []
    seen: set = set()
    n_helper_base = int(round(cfg.helper_frac * cfg.n_base_tasks))
    for i in range(cfg.n_base_tasks + cfg.n_new_tasks):
        for _ in range(10_000):
            helper = int(rng.integers(cfg.n_helpers)) if i < n_helper_base or i >= cfg.n_base_tasks else None
            p = random_program(cfg, rng, helper)
            inline = p.inline(helpers)
            if inline not in seen and (helper is not None or not contains_helper(p, helpers)):
                break
        else:
            raise ValueError(f"world: could not draw {cfg.n_base_tasks + cfg.n_new_tasks} distinct tasks; "
                             f"lower world.n_base_tasks / n_new_tasks or raise world.max_ops")
        seen.add(inline)
        programs.append(p)
    tok = CodeTokenizer(cfg.n_helpers, cfg.n_base_tasks, cfg.n_new_tasks)
    return CodeWorld(cfg, tok, tuple(helpers), tuple(programs))
