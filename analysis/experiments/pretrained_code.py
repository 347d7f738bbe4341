"""``pretrained_code``: can the pretrained base write the code family's base task, in Python
(syntax 1) and in JavaScript (syntax 2)? (issue 10 item 4: cross-lingual code reuse runs "on the
pretrained model only where the base can do the base task (report its accuracy first; say so if
it cannot)"; the measurement is :func:`toymodels.pretrained_code.run_pretrained_code`.)

Forward passes only, no LoRA. One config per seed (the seed draws the tasks and each task's
shots); the model is ``model`` as in ``pretrained_two_hop`` (the bundled SmolLM2-135M-Instruct by
default; its install check is reused).

``reproduce_profiles = ("paper",)``, as for the other SmolLM2 experiments; ``reproduce --only
pretrained_code`` or ``run pretrained_code`` runs the quick profile (3 seeds x 48 tasks x 2
languages) on demand.

Claim ``CODE-PRE-0`` (a precondition, the gate of a code-reuse run on the pretrained model): per
seed, the smaller of the two languages' exact match, above 0.5.

MEASURED (quick profile, bundled SmolLM2-135M-Instruct, 2026-12-01; ~240 CPU-s for the 3 seeds,
user + sys, one worker, ~80 CPU-s a seed): exact match Python 0.083 / 0.000 / 0.000, JavaScript
0.021 / 0.042 / 0.062 (seeds 0 / 1 / 2, 48 tasks each); gold log-prob per token Python -0.95 /
-1.08 / -1.16, JavaScript -0.42 / -0.47 / -0.48. CODE-PRE-0 per seed 0.021 / 0.000 / 0.000: the
base cannot write the task, so code reuse on the pretrained model is not run. Exact match is
strict (one canonical text per program; a program the model writes differently but equivalently
counts as wrong): a lower bound of the ability.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.experiments.pretrained_two_hop import check_available, check_model_source, model_label
from analysis.figures.pretrained_code import code_base_figure
from analysis.registry import ClaimMeasure, Experiment, Result, register
from analysis.stats import ACCURACY
from analysis.tables import print_table
from analysis.verdict import Claim
from toymodels.config import Config
from toymodels.pretrained_code import PretrainedCodeConfig, paper, quick
from toymodels.tasks.code_langs import NAMES

SEEDS = {"quick": (0, 1, 2), "paper": (0, 1, 2, 3, 4)}
THRESHOLD = 0.5


@dataclass(frozen=True)
class CodeRunConfig(Config):
    """``protocol``: the task config; ``model``: where the weights come from (as in
    ``pretrained_two_hop``); ``seed``: draws the tasks and their shots."""

    protocol: PretrainedCodeConfig = field(default_factory=quick)
    model: str | None = None
    seed: int = 0

    def __post_init__(self):
        check_model_source(self.model)


def grid(profile: str) -> list[CodeRunConfig]:
    protocol = quick() if profile == "quick" else paper()
    return [CodeRunConfig(protocol=protocol, seed=s) for s in SEEDS[profile]]


def run(config: CodeRunConfig, device: str, results: Path | str) -> dict:
    """Load the model, score the task in every language, return the scores."""
    check_available(config.model)
    from toymodels.pretrained import load_causal_lm
    from toymodels.pretrained_code import run_pretrained_code

    model, tokenizer = load_causal_lm(config.model, Path(results) / "pretrained")
    scores = run_pretrained_code(config.protocol, model, tokenizer, seed=config.seed, device=device)
    return {"model": model_label(config.model), "seed": config.seed, "scores": scores}


def preflight(config: CodeRunConfig) -> None:
    """Before the sweep: the packages, then the model source (one-line errors for broken
    weights, config, tokenizer or GGUF file) without loading its weights."""
    check_available(config.model)
    from toymodels.pretrained import check_source

    check_source(config.model, tokenizer=True, scan_finite=True)


# --- the claim ------------------------------------------------------------------------------

def exact(r: Result, language: str) -> float:
    return r.result["scores"]["languages"][language]["exact"]


def languages(r: Result) -> list[str]:
    """The config's languages, in its order (a cached result's keys come back sorted)."""
    return list(r.config.protocol.languages)


def worst_language(results: list[Result]) -> list[float]:
    """Per seed, the smaller exact match of the languages (the task must work in both)."""
    return [min(exact(r, lang) for lang in languages(r)) for r in sorted(results, key=lambda r: r.config.seed)]


def gate(results: list[Result]) -> str:
    """The numbers behind CODE-PRE-0 and what follows from them for the reuse run."""
    if not results:
        return "no results"
    seeds = sorted(r.config.seed for r in results)
    means = {lang: float(np.mean([exact(r, lang) for r in results])) for lang in languages(results[0])}
    tasks = min(r.result["scores"]["n_programs"] for r in results)
    line = (f"exact match, mean over {len(seeds)} seed(s) x {tasks} tasks: "
            + ", ".join(f"{NAMES[lang]} {v:.3f}" for lang, v in means.items()))
    low = [NAMES[lang] for lang, v in means.items() if v < THRESHOLD]
    if low:
        line += (f"; the base does not write the base task in {' and '.join(low)} (mean under {THRESHOLD:g}), so "
                 "code reuse on the pretrained model is not run (issue 10 item 4: only where the base can)")
    else:
        line += "; code reuse on the pretrained model runs only if this claim is supported"
    return line + (f"; UNDERPOWERED ({len(seeds)} seed(s) < 3)" if len(seeds) < 3 else "")


def tasks_per_language(results: list[Result]) -> dict[str, int]:
    """Tasks scored per language and seed (the fewest over seeds)."""
    return {NAMES[lang]: min(r.result["scores"]["n_programs"] for r in results) for lang in languages(results[0])}


CLAIMS = (ClaimMeasure(Claim(
    "CODE-PRE-0", "precondition: the pretrained base writes the code base task (an English description -> its "
    "program) in both syntaxes, Python and JavaScript, few-shot",
    "min over the two languages of exact match (teacher-forced argmax of the gold program's tokens)",
    "above", THRESHOLD, "a convention: the base writes at least half of the tasks exactly in each language, "
    "so that a composed task it fails is not failed for want of the language"),
    worst_language, ("pretrained_code",), gate, bounds=ACCURACY, questions=tasks_per_language),)


# --- terminal table -------------------------------------------------------------------------

def print_all(results: list[Result], out=None) -> None:
    out = out or sys.stdout
    rows = []
    for r in sorted(results, key=lambda r: r.config.seed):
        for lang in languages(r):
            s = r.result["scores"]["languages"][lang]
            rows.append([r.result["seed"], NAMES[lang], f"{s['exact']:.3f}", f"{s['logprob']:.2f}",
                         f"{s['logprob_per_token']:.3f}", f"{s['answer_tokens']:.1f}",
                         ", ".join(f"{k} op: {v:.2f}" for k, v in s["by_ops"].items())])
    if results:
        print(f"\n{results[0].result['model']}: the code base task, few-shot "
              f"({results[0].result['scores']['config']['n_shots']} shots), "
              f"{results[0].result['scores']['n_programs']} tasks per seed", file=out)
    print_table(["seed", "language", "exact", "logprob", "logprob/token", "tokens", "exact by ops"], rows, out=out,
                rule=True)


EXPERIMENT = register(Experiment(
    name="pretrained_code",
    description="can SmolLM2-135M write the code base task in Python and JavaScript (few-shot exact match)? "
                "The gate of code reuse on the pretrained model; reproduce: paper profile only",
    grid=grid, run=run, figures={"pretrained_code": code_base_figure}, claims=CLAIMS,
    reproduce_profiles=("paper",), preflight=preflight, summary=print_all,
))
