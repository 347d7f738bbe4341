"""Can a pretrained causal LM do the code family's base task? (issue 10 item 4, the pretrained
half: "on the pretrained model only where the base can do the base task; report its accuracy
first"). No LoRA is trained here: this is the precondition of a code-reuse run.

The base task: given an English description of a list program (:func:`code_langs.describe`),
write it in a language, Python (syntax 1) or JavaScript (syntax 2) (:mod:`toymodels.tasks.code_langs`).
Each prompt is few-shot, ``n_shots`` other tasks of the same draw with their code, then the
question's description; the answer is the gold program's text::

    # Each comment describes a list of integers x; the line below it is a Python expression for it.
    # Keep the odd numbers, then return their sum
    sum(v for v in x if v % 2 == 1)

    # Reverse the list, then return the list
    x[::-1]

    # Add 2 to each number, then return how many numbers are left
    ->  len([v + 2 for v in x])

A task's shots are the same tasks in both languages, so the two scores differ by language
only. Scores (:func:`toymodels.pretrained_metrics.answer_rows`: teacher-forced, so ``exact`` is
greedy decoding of the whole gold text; the stop after it is not scored):

- ``exact``: share of tasks whose gold program is the argmax at every token;
- ``logprob``: mean over tasks of the gold program's log-probability (summed over its tokens);
  ``logprob_per_token`` the mean per token (the languages' texts differ in length);
- ``by_ops``: ``exact`` per number of ops; ``rows``: every task's program, description,
  ``exact`` and ``logprob`` (the record shows which tasks the model writes).

Randomness: ``seeds.numpy_rng(seed, "code_pre", "programs" | "shots")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from toymodels.config import Config, check_fields, counts
from toymodels.pretrained import LogitsLM
from toymodels.pretrained_metrics import score_rows
from toymodels.seeds import numpy_rng
from toymodels.tasks.code_dsl import Program
from toymodels.tasks.code_langs import COMMENT, LANGUAGES, NAMES, REDUCERS, describe, render_language
from toymodels.tasks.code_world import random_step
from toymodels.tasks.natural import encode_pairs

HEADER = "{c} Each comment describes a list of integers x; the line below it is a {name} expression for it.\n"


@dataclass(frozen=True)
class PretrainedCodeConfig(Config):
    """``n_programs`` distinct tasks per seed, each scored in every language of ``languages``
    after ``n_shots`` other tasks; ``min_ops..max_ops`` ops per program (ops and arguments as
    in the DSL), a reducer of :data:`code_langs.REDUCERS` with probability ``reducer_prob``."""

    n_programs: int = 48
    n_shots: int = 3
    min_ops: int = 1
    max_ops: int = 2
    reducer_prob: float = 0.5
    languages: tuple[str, ...] = LANGUAGES

    def __post_init__(self):
        check_fields("protocol", self, counts(self, {"n_programs": 2, "n_shots": 0, "min_ops": 1, "max_ops": 1}))
        check_fields("protocol", self, {
            "n_shots": (self.n_shots < self.n_programs, f"< n_programs={self.n_programs} (shots are other tasks)"),
            "min_ops": (self.min_ops <= self.max_ops, f"<= max_ops={self.max_ops}"),
            "max_ops": (self.max_ops <= 4, "<= 4"),
            "reducer_prob": (0.0 <= self.reducer_prob <= 1.0, "in [0, 1]"),
            "languages": (len(self.languages) > 0 and set(self.languages) <= set(LANGUAGES)
                          and len(set(self.languages)) == len(self.languages),
                          f"distinct names among {', '.join(LANGUAGES)}")})


def quick() -> PretrainedCodeConfig:
    """48 tasks per seed and language, 3 shots, 1-2 ops."""
    return PretrainedCodeConfig()


def paper() -> PretrainedCodeConfig:
    """96 tasks per seed and language, 3 shots, 1-3 ops."""
    return PretrainedCodeConfig(n_programs=96, max_ops=3)


def draw_programs(cfg: PretrainedCodeConfig, rng: np.random.Generator) -> list[Program]:
    """``cfg.n_programs`` distinct programs (raises ``ValueError`` when the space is too small)."""
    programs: list[Program] = []
    for _ in range(1000 * cfg.n_programs):
        steps = tuple(random_step(rng) for _ in range(int(rng.integers(cfg.min_ops, cfg.max_ops + 1))))
        reducer = str(REDUCERS[int(rng.integers(len(REDUCERS)))]) if rng.random() < cfg.reducer_prob else None
        p = Program(steps, reducer)
        if p not in programs:
            programs.append(p)
            if len(programs) == cfg.n_programs:
                return programs
    raise ValueError(f"protocol.n_programs={cfg.n_programs}: could not draw that many distinct programs with "
                     f"{cfg.min_ops}-{cfg.max_ops} ops; lower n_programs or raise max_ops")


def draw_shots(n_programs: int, n_shots: int, rng: np.random.Generator) -> list[list[int]]:
    """Per task, ``n_shots`` other tasks (distinct, in drawn order)."""
    return [[int(j) for j in rng.choice([j for j in range(n_programs) if j != i], n_shots, replace=False)]
            for i in range(n_programs)]


def prompt_pair(programs: list[Program], shots: list[int], i: int, language: str) -> tuple[str, str]:
    """``(prompt, answer)`` of task ``i`` in ``language`` after its ``shots``."""
    c = COMMENT[language]
    text = HEADER.format(c=c, name=NAMES[language])
    for j in shots:
        text += f"{c} {describe(programs[j])}\n{render_language(programs[j], language)}\n\n"
    return text + f"{c} {describe(programs[i])}\n", render_language(programs[i], language)


def run_pretrained_code(cfg: PretrainedCodeConfig, model: nn.Module, tokenizer, seed: int,
                        device: str = "cpu") -> dict:
    """Score the base ``model`` (a Hugging Face causal LM) on the task in every language
    (module docstring); JSON-able."""
    programs = draw_programs(cfg, numpy_rng(seed, "code_pre", "programs"))
    shots = draw_shots(cfg.n_programs, cfg.n_shots, numpy_rng(seed, "code_pre", "shots"))
    pairs = {lang: [prompt_pair(programs, shots[i], i, lang) for i in range(len(programs))] for lang in cfg.languages}
    lm = LogitsLM(model.to(device))
    scored = score_rows(lm, {lang: encode_pairs(rows, tokenizer) for lang, rows in pairs.items()})
    out = {"config": cfg.to_dict(), "n_programs": len(programs), "languages": {}}
    n_ops = np.array([len(p.steps) for p in programs])
    for lang, (exact, logprob) in scored.items():
        tokens = np.array([len(tokenizer.encode(a, add_special_tokens=False)) for _, a in pairs[lang]])
        exact_np, logprob_np = exact.numpy(), logprob.double().numpy()
        out["languages"][lang] = {
            "exact": float(exact_np.mean()), "logprob": float(logprob_np.mean()),
            "logprob_per_token": float((logprob_np / tokens).mean()), "answer_tokens": float(tokens.mean()),
            "by_ops": {str(k): float(exact_np[n_ops == k].mean()) for k in sorted(set(n_ops.tolist()))},
            "rows": [{"description": describe(p), "gold": a, "shots": shots[i], "exact": bool(exact_np[i]),
                      "logprob": float(logprob_np[i])} for i, (p, (_, a)) in enumerate(zip(programs, pairs[lang]))]}
    out["prompt_example"] = {lang: "".join(rows[0]) for lang, rows in pairs.items()}
    return out
