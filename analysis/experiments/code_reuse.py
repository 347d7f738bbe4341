"""``code_reuse``: does data-free reuse of a task-semantics adapter (new tasks in syntax A) and a
syntax adapter (other new tasks in syntax B) write the semantics tasks in B, and does code shared
by both datasets (helper calls) make it work? (issue 10 items 4-5; PAPER.md, TMLR task families:
"reuse can succeed when fine-tuning datasets share solution templates, such as ... reusable code".)

Each grid point is one run seed (also the base's seed: every seed trains its own base model on the
toy code corpus, :func:`toymodels.code_reuse.train_code_base`) and runs
:func:`toymodels.code_reuse.run_code_reuse` once per style on that one base: ``call`` (both
datasets call the shared helper snippets: the "reusable code" condition) and ``inline`` (the same
tasks with the helpers' ops written out). One grid point holds both styles because code bases are
not in the shared model cache (``analysis.basemodels`` stores two-hop bases): training the base
once per seed is what keeps the quick profile in CPU minutes, and the two styles are paired on
the same base, tasks, inputs and LoRA inits.

Profiles. ``quick`` (CPU): ``span_presets.quick_code_reuse``, methods average, sum, TIES and Arrow, 3
seeds. ``paper`` (GPU): 9 methods (LoraHub and the oracle included), 5 seeds.

MEASURED (seed 0 only, quick methods, 2026-12-01; bases: ``span_presets.quick_code_reuse``): with weight
decay 0.1 (cross_test 0.42) and 1.0 (cross_test 0.58, the preset) no data-free method and not even
the joint-data LoRA on {semantics, syntax, D0} writes a single composed question exactly, in either
style (one 0.12 execution accuracy each: TIES on call, average + composed on inline); the composed
expert alone and the joint LoRA with it score 1.00; broadcast control <= 0.03 everywhere. So at
this size TEMPLATE-1's positive half fails, and its "near the joint ceiling" half holds only
vacuously (the ceiling is 0 too).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from analysis.registry import Ceiling, ClaimMeasure, Experiment, Result, register
from analysis.stats import paired_differences
from analysis.verdict import Claim
from toymodels.code_reuse import CodeReuseConfig
from toymodels.config import Config, check_fields
from toymodels.presets import PAPER_METHODS, QUICK_METHODS
from toymodels.reuse import DATA_FREE
from toymodels.span_presets import quick_code_reuse
from toymodels.tasks.code_world import STYLES

MARGIN = 0.1
NEAR = 0.2
PRECONDITION = 0.5
KEEP = ("composed", "composed_exec", "composed_logprob", "specificity", "conditional", "facts", "retention",
        "probes", "broadcast", "composed_chain", "composed_rows", "composed_adapter")


@dataclass(frozen=True)
class CodeReuseExperimentConfig(Config):
    reuse: CodeReuseConfig = field(default_factory=quick_code_reuse)
    styles: tuple[str, ...] = STYLES  # each runs on the seed's one base (experts.style replaced)
    seed: int = 0  # the run seed: base, experts, inputs, LoRAs, merges

    def __post_init__(self):
        check_fields("code_reuse", self, {
            "styles": (bool(self.styles) and set(self.styles) <= set(STYLES) and len(set(self.styles)) == len(
                self.styles), f"a non-empty tuple of distinct styles from {', '.join(STYLES)}")})


def make_grid(reuse: CodeReuseConfig, seeds, methods: tuple[str, ...]) -> list[CodeReuseExperimentConfig]:
    return [CodeReuseExperimentConfig(dataclasses.replace(reuse, methods=methods), STYLES, s) for s in seeds]


def grid(profile: str) -> list[CodeReuseExperimentConfig]:
    if profile == "quick":
        return make_grid(quick_code_reuse(), range(3), QUICK_METHODS)
    return make_grid(quick_code_reuse(), range(5), PAPER_METHODS)


def _style_result(out: dict) -> dict:
    return {"n_composed": out["n_composed"], "tasks": out["tasks"], "chance": out["chance"],
            "experts": {n: {k: e[k] for k in ("steps", "reached_target", "final")} for n, e in out["experts"].items()},
            "models": {n: {k: s[k] for k in KEEP if k in s} for n, s in out["models"].items()}}


def run(config: CodeReuseExperimentConfig, device: str, results: Path | str) -> dict:
    from analysis.progress import current
    from toymodels.code_reuse import run_code_reuse, train_code_base

    progress = current()
    base = train_code_base(config.reuse, config.seed, device, progress)
    styles = {}
    for style in config.styles:
        cfg = dataclasses.replace(config.reuse, experts=dataclasses.replace(config.reuse.experts, style=style))
        styles[style] = run_code_reuse(cfg, config.seed, device, progress, base=base)
    first = styles[config.styles[0]]
    return {"seed": config.seed, "base": {k: first["base"][k] for k in ("steps", "seconds", "reached_target", "final")},
            "precondition": first["precondition"], "styles": {s: _style_result(o) for s, o in styles.items()}}


# --- reading the results -------------------------------------------------------------

def data_free(results: list[Result]) -> list[str]:
    """The data-free reuse methods present in ``results``."""
    return [m for m in DATA_FREE if results and m in results[0].config.reuse.methods]


def value(r: Result, style: str, model: str, what: str = "composed") -> float:
    """``composed`` / ``composed_exec`` accuracy or the composed ``broadcast`` control of one model."""
    scores = r.result["styles"][style]["models"][model]
    return scores["broadcast"]["composed"] if what == "broadcast" else scores[what]


def by_seed(results: list[Result], fn: Callable[[Result], float]) -> dict[int, float]:
    return {r.config.seed: fn(r) for r in sorted(results, key=lambda r: r.config.seed)}


def best_data_free(r: Result, style: str, what: str = "composed") -> float:
    """The best data-free method's composed accuracy on the ``skills`` library."""
    return max(value(r, style, f"{m}/skills", what) for m in data_free([r]))


# --- claims: one number per seed -------------------------------------------------------

def base_writes_b(results: list[Result]) -> list[float]:
    """Per seed: the base's exact match on familiar tasks held out in syntax B (known in A only)."""
    return list(by_seed(results, lambda r: r.result["precondition"]["cross_test"]).values())


def beyond_broadcast(style: str) -> Callable[[list[Result]], list[float]]:
    """Per seed: max over data-free methods of (composed - broadcast control), ``skills`` library."""
    def measure(results: list[Result]) -> list[float]:
        return list(by_seed(results, lambda r: max(value(r, style, f"{m}/skills") -
                                                   value(r, style, f"{m}/skills", "broadcast")
                                                   for m in data_free([r]))).values())
    measure.__name__ = f"beyond_broadcast_{style}"
    return measure


def joint_gap(style: str) -> Callable[[list[Result]], list[float]]:
    """Per seed: joint-data LoRA minus the best data-free method, composed accuracy, ``skills``."""
    def measure(results: list[Result]) -> list[float]:
        return list(by_seed(results, lambda r: value(r, style, "joint/skills") - best_data_free(r, style)).values())
    measure.__name__ = f"joint_gap_{style}"
    return measure


# A reuse verdict is read against the joint-data LoRA on the same experts' data (issue 12): when it
# answers fewer than half the composed questions, nothing that fine-tunes on this data composes
# either, and the claim is "not testable" here. 0.5 is a convention (half the composed questions).
CEILING = 0.5


def joint_ceiling(style: str) -> Ceiling:
    """The joint-data LoRA on the skills library's data: composed exact match per seed."""
    def measure(results: list[Result]) -> list[float]:
        return list(by_seed(results, lambda r: value(r, style, "joint/skills")).values())
    return Ceiling(f"joint/skills composed exact match ({style} style)", measure, CEILING)


def shared_code_gain(results: list[Result]) -> list[float]:
    """Per seed: best data-free composed accuracy on ``skills``, call minus inline (paired)."""
    return paired_differences(by_seed(results, lambda r: best_data_free(r, "call")),
                              by_seed(results, lambda r: best_data_free(r, "inline")))


def _claims() -> tuple[ClaimMeasure, ...]:
    fig = ("code_reuse_methods",)
    per_question = f"{MARGIN:g} is just under one composed question of the 8 a seed asks (0.125)"
    return (
        ClaimMeasure(Claim(
            "CODE-0", "the base writes familiar tasks it was taught only in syntax A in syntax B (held-out "
            "cross-lingual generalisation; precondition of the reuse test)",
            "base exact match on familiar tasks held out in syntax B (cross_test)", "above", PRECONDITION,
            f"a convention: {PRECONDITION:g} = at least half of the held-out familiar tasks written exactly in B, "
            "far above chance (1 / #programs)"), base_writes_b),  # no figure plots the precondition
        ClaimMeasure(Claim(
            "TEMPLATE-1-code-call", "with shared helper code (call style), data-free reuse of {semantics, syntax} "
            "writes the semantics tasks in syntax B beyond the broadcast control",
            "max over data-free methods of (composed exact match - broadcast-control rate), skills library, call",
            "above", MARGIN, f"a convention: {per_question}"), beyond_broadcast("call"), fig, ceiling=joint_ceiling("call")),
        ClaimMeasure(Claim(
            "TEMPLATE-1-code-ceiling", "with shared helper code, the best data-free reuse comes close to the "
            "joint-data LoRA on the same experts' data",
            "joint/skills - best data-free composed exact match, call style", "below", NEAR,
            f"a convention for 'close': {NEAR:g} is under two composed questions of 8 (0.25)"),
            joint_gap("call"), fig, ceiling=joint_ceiling("call")),
        ClaimMeasure(Claim(
            "TEMPLATE-1-code-inline", "without shared code (inline style), no data-free reuse of {semantics, "
            "syntax} writes the semantics tasks in syntax B beyond the broadcast control",
            "max over data-free methods of (composed exact match - broadcast-control rate), skills library, inline",
            "below", MARGIN, f"a convention: {per_question}"), beyond_broadcast("inline"), fig, ceiling=joint_ceiling("inline")),
        ClaimMeasure(Claim(
            "TEMPLATE-1-code-gain", "shared helper code raises data-free reuse accuracy",
            "best data-free composed exact match on skills, call - inline (paired by seed)", "above", MARGIN,
            f"a convention: {per_question}"), shared_code_gain, fig, ceiling=joint_ceiling("call")),
    )


def _figures() -> dict:
    from analysis.figures import code_reuse as f

    return {"code_reuse_methods": f.methods_figure}


# --- terminal summary ------------------------------------------------------------------

def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def print_summary(results: list[Result], out=None) -> None:
    """Per style: every model's composed metrics, mean over seeds; the base's precondition per seed."""
    import sys

    from analysis.tables import print_table

    out = out or sys.stdout
    for r in sorted(results, key=lambda r: r.config.seed):
        pre = ", ".join(f"{k} {v:.2f}" for k, v in r.result["precondition"].items())
        print(f"seed {r.config.seed} base ({r.result['base']['steps']} steps): {pre}", file=out)
    head = ["model", "composed", "exec", "logprob", "broadcast", "cond (n)", "spec margin"]
    for style in results[0].config.styles if results else ():
        models = list(results[0].result["styles"][style]["models"])
        rows = []
        for m in models:
            s = [r.result["styles"][style]["models"][m] for r in results]
            cond, n = _mean(x["conditional"]["composed"] for x in s), _mean(x["conditional"]["n"] for x in s)
            rows.append([m] + [format(_mean(x[k] for x in s), ".2f") for k in ("composed", "composed_exec")] +
                        [format(_mean(x["composed_logprob"] for x in s), ".1f"),
                         format(_mean(x["broadcast"]["composed"] for x in s), ".2f"),
                         f"{'-' if cond is None else format(cond, '.2f')} ({n:.1f})",
                         format(_mean(x["specificity"]["margin"] for x in s), ".2f")])
        chance = _mean(r.result["styles"][style]["chance"]["composed"] for r in results)
        print(f"\nstyle {style}: composed = exact match, exec = execution accuracy, mean over {len(results)} seed(s); "
              f"chance {chance:.3f}", file=out)
        print_table(head, rows, out=out, rule=True)


def _summary(results: list[Result]) -> None:
    print_summary(results)


EXPERIMENT = register(Experiment(
    name="code_reuse",
    description="toy cross-lingual code: semantics (syntax A) + syntax (B) adapters, with / without shared helpers",
    grid=grid, run=run, figures=_figures(), claims=_claims(), summary=_summary,
))
