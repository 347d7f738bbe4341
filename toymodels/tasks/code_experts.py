"""Fine-tuning sets of the toy cross-lingual code reuse experiment (issue 10 item 4; PAPER.md).

Experts (names as in ``CodeExpertSet.train``), over disjoint sets of new tasks ``t*``:

- ``semantics``: what its tasks compute, in syntax A (``BOS t LA -> A-program``);
- ``syntax``: OTHER tasks in syntax B (``BOS t LB -> B-program``, or ``A ; B`` with fmt ``via``);
- ``composed``: the composed rows themselves, the semantics tasks in syntax B (target-task expert);
- ``D0, D1, ...``: distractors, other tasks in syntax A.

The composed question asks a semantics task in syntax B: what the task computes is in one
adapter, writing B for new tasks in the other. The "reusable code" condition (``style``):
``call``: every new task is built around a helper snippet and written with the helper call, and
every helper the semantics tasks call is also called by some syntax task, so the two datasets
share the code ``h* ( ... )`` / ``| h*``; ``inline``: the same tasks with the helpers' ops
written out, so no helper token appears in either dataset. The tasks (and so the semantics)
are identical in both conditions for one seed.

Broadcast controls (:class:`toymodels.tasks.family.SpanControl`): the expert's template asked
about familiar tasks (whose programs are never the expert's); an expert that broadcasts writes
one of its own programs for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from toymodels.config import Config, check_fields, counts
from toymodels.tasks.code_corpus import CodePretraining, task_examples, translate_row
from toymodels.tasks.code_dsl import Program, render
from toymodels.tasks.code_world import STYLES
from toymodels.tasks.knowledge import encode
from toymodels.tasks.family import SpanControl, SpanExpertSet


@dataclass(frozen=True)
class CodeExpertConfig(Config):
    n_tasks: int = 8  # new tasks per expert
    style: Literal["call", "inline"] = "call"
    n_distractors: int = 1
    n_control: int = 64

    def __post_init__(self):
        check_fields("experts", self, {"style": (self.style in STYLES, f"one of {', '.join(STYLES)}")} |
                     counts(self, {"n_tasks": 1, "n_distractors": 0, "n_control": 1}))


@dataclass(frozen=True)
class CodeExpertSet(SpanExpertSet):
    """Fields of :class:`SpanExpertSet`, plus ``tasks[name]``: the task indices of each expert
    (``composed``: the semantics tasks); ``gold[name]``: the program of each row of
    ``facts_eval[name]`` or ``probes[name]`` and ``syntax[name]`` the syntax of its final
    answers (for the execution metric). Probes: ``translate_semantics`` (the semantics programs
    translated A -> B: can the base write them in B?) and ``syntax_in_A`` (the syntax tasks in A)."""

    style: str
    tasks: dict[str, np.ndarray]
    gold: dict[str, list[Program]]
    syntax: dict[str, str]


def _helpers_of(world, tasks) -> set[int]:
    return {arg for i in tasks for op, arg in world.programs[int(i)].steps if op == "call"}


def _pick_tasks(pre: CodePretraining, cfg: CodeExpertConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint task sets; the syntax tasks first cover every helper the semantics tasks call."""
    world, n = pre.world, cfg.n_tasks
    need = n * (2 + cfg.n_distractors)
    if need > len(world.new_tasks):
        raise ValueError(f"experts.n_tasks={n} with n_distractors={cfg.n_distractors} needs {need} new tasks but "
                         f"world.n_new_tasks={len(world.new_tasks)}; allowed n_tasks <= "
                         f"{len(world.new_tasks) // (2 + cfg.n_distractors)}")
    pool = [int(i) for i in rng.permutation(np.array(world.new_tasks))]
    semantics, pool = pool[:n], pool[n:]
    syntax = []
    for h in sorted(_helpers_of(world, semantics)):
        first = next((i for i in pool if h in _helpers_of(world, [i])), None)
        if first is None:
            raise ValueError(f"no other new task calls helper h{h}: raise world.n_new_tasks")
        syntax.append(first)
        pool.remove(first)
    if len(syntax) > n:
        raise ValueError(f"experts.n_tasks={n}: the semantics tasks call {len(syntax)} helpers, each needing a "
                         f"syntax task; allowed n_tasks >= {len(syntax)}")
    syntax += pool[:n - len(syntax)]
    pool = [i for i in pool if i not in syntax]
    out = {"semantics": np.array(semantics), "syntax": np.array(syntax)}
    return out | {f"D{j}": np.array(pool[j * n:(j + 1) * n]) for j in range(cfg.n_distractors)}


def _span(pre: CodePretraining, program: Program, syntax: str) -> tuple[int, ...]:
    """The final answer span of ``program`` asked in ``syntax`` (the part after ``;`` if via)."""
    return tuple(pre.world.tokenizer.encode(render(program, syntax)))


def _control(pre: CodePretraining, programs: list[Program], syntax: str, n: int) -> SpanControl:
    """Familiar tasks asked in ``syntax``; the new answers are the expert's ``programs``. No familiar
    program equals a new one (the world keeps inline programs distinct; pinned by a test), so no
    familiar task has to be dropped."""
    world = pre.world
    new = frozenset(_span(pre, p, syntax) for p in programs)
    keep = list(world.base_tasks)[:n]
    return SpanControl(task_examples(world, keep, syntax, "call", pre.config.fmt), tuple(new for _ in keep),
                       world.tokenizer.id(";"))


def make_code_expert_set(pre: CodePretraining, cfg: CodeExpertConfig, rng: np.random.Generator) -> CodeExpertSet:
    world, fmt, style = pre.world, pre.config.fmt, cfg.style
    tasks = _pick_tasks(pre, cfg, rng)
    tasks = {"semantics": tasks["semantics"], "syntax": tasks["syntax"], "composed": tasks["semantics"]} | \
        {k: v for k, v in tasks.items() if k.startswith("D")}
    syntax = {name: "B" if name in ("syntax", "composed") else "A" for name in tasks}
    train = {name: task_examples(world, t, syntax[name], style, fmt) for name, t in tasks.items()}
    gold = {name: [world.written(int(i), style) for i in t] for name, t in tasks.items()}
    controls = {name: _control(pre, gold[name], syntax[name], cfg.n_control) for name in tasks}
    probes = {"translate_semantics": encode([translate_row(world, p, "A", "B") for p in gold["semantics"]]),
              "syntax_in_A": task_examples(world, tasks["syntax"], "A", style, fmt)}
    gold |= {"translate_semantics": gold["semantics"], "syntax_in_A": gold["syntax"]}
    syntax |= {"translate_semantics": "B", "syntax_in_A": "A"}
    retention = {k: pre.eval_sets[k] for k in ("task_A", "cross_test", "translate_test")}
    return CodeExpertSet(train=train, facts_eval=dict(train), composed=train["composed"], controls=controls,
                         retention=retention, probes=probes, style=style, tasks=tasks, gold=gold, syntax=syntax)
