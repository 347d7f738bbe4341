"""``math_reuse``: does a shared solution template let data-free reuse compose a facts adapter and a
procedure adapter on toy math word problems? (issue 10 items 2 and 5; PAPER.md, the TMLR claim
"reuse can succeed when fine-tuning datasets share solution templates".)

Each grid point is one seed: it pretrains its own base model (base seed = seed, so seeds are
independent replications of the whole pipeline) and runs :func:`toymodels.math_reuse.run_math_reuse`
on it once per template condition: ``same`` (the facts adapter's data are worked solutions in the
procedure data's template) and ``different`` (atomic facts ``e attr -> v``). Both conditions share
the base and the procedure and composed problems, so their difference is paired per seed.

Claims: MATH-0 (precondition: the base solves held-out familiar problems), TEMPLATE-1-same (one
number per seed: some data-free method beats its broadcast control AND comes close to the
joint-data ceiling; a failed ceiling cannot satisfy it) and TEMPLATE-1-different (no data-free
method beats its control). Where the joint-data ceiling itself does not compose, read a
TEMPLATE-1-different "supported" as not testable (floor effect): the detail line prints the ceiling.

Profiles. ``quick``: :func:`span_presets.quick_math_reuse` (the ``skills`` library, 32 composed problems),
methods average, sum, TIES, Arrow, 3 seeds. ``paper``: 5 seeds, 9 methods (LoraHub and the oracle
included), both libraries.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from analysis.registry import Ceiling, ClaimMeasure, Experiment, Result, register
from analysis.stats import ACCURACY, DIFFERENCE
from analysis.verdict import Claim
from toymodels.config import Config
from toymodels.math_reuse import LIBRARIES, MathReuseConfig
from toymodels.presets import PAPER_METHODS, QUICK_METHODS
from toymodels.reuse import DATA_FREE
from toymodels.span_presets import quick_math_reuse
from toymodels.tasks.math_experts import TEMPLATES

KEEP = ("composed", "composed_chain", "composed_logprob", "specificity", "conditional", "facts", "retention",
        "broadcast", "probes")
MARGIN, CLOSE, SOLVES = 0.1, 0.2, 0.8
NEAR = (-1.0 - MARGIN, 1.0 - MARGIN)  # the range of composes_near_ceiling's min(...)


@dataclass(frozen=True)
class MathReuseExpConfig(Config):
    run: MathReuseConfig = field(default_factory=quick_math_reuse)  # experts.template is set per condition
    templates: tuple[str, ...] = TEMPLATES
    seed: int = 0  # everything: the base's corpus and init, the experts, the LoRAs and merges

    def __post_init__(self):
        if not self.templates or any(t not in TEMPLATES for t in self.templates):
            raise ValueError(f"templates={self.templates!r}: must be a non-empty tuple of {', '.join(TEMPLATES)}")


def grid(profile: str) -> list[MathReuseExpConfig]:
    if profile == "quick":
        return [MathReuseExpConfig(dataclasses.replace(quick_math_reuse(), methods=QUICK_METHODS), seed=s)
                for s in range(3)]
    run = dataclasses.replace(quick_math_reuse(), methods=PAPER_METHODS, libraries=LIBRARIES)
    return [MathReuseExpConfig(run, seed=s) for s in range(5)]


def run(config: MathReuseExpConfig, device: str, results: Path | str) -> dict:
    """Trains the seed's base once (``results`` unused: no cache), then both template conditions."""
    from analysis.progress import current
    from toymodels.math_reuse import run_math_reuse, train_math_base

    progress = current()
    base = train_math_base(config.run, config.seed, device, progress)
    out: dict = {"seed": config.seed, "templates": {}}
    for template in config.templates:
        cfg = dataclasses.replace(config.run, experts=dataclasses.replace(config.run.experts, template=template))
        r = run_math_reuse(cfg, config.seed, device, progress, base=base)
        out["base"] = r["base"]
        out["templates"][template] = {
            "n_composed": r["n_composed"], "chance": r["chance"],
            "experts": {n: {k: e[k] for k in ("steps", "reached_target", "final")} for n, e in r["experts"].items()},
            "models": {n: {k: s[k] for k in KEEP + ("composed_adapter",) if k in s} for n, s in r["models"].items()}}
    return out


# --- reading the results -------------------------------------------------------------

def data_free(results: list[Result]) -> list[str]:
    return [m for m in DATA_FREE if results and m in results[0].config.run.methods]


def value(r: Result, template: str, model: str, what: str = "composed") -> float:
    """``composed`` accuracy or the composed ``control`` (broadcast) rate of one model."""
    s = r.result["templates"][template]["models"][model]
    return s["broadcast"]["composed"] if what == "control" else s[what]


def per_seed(results: list[Result], fn: Callable[[Result], float]) -> list[float]:
    return [fn(r) for r in sorted(results, key=lambda r: r.config.seed)]


def base_solves(results: list[Result]) -> list[float]:
    """Per seed: the base's worse exact match of held-out problems with stated facts and with
    recalled familiar facts (the two skills a composed problem needs)."""
    return per_seed(results, lambda r: min(r.result["base"]["precondition"][k] for k in ("context_test",
                                                                                           "memory_test")))


def beyond_control(template: str) -> Callable[[list[Result]], list[float]]:
    """Per seed: max over data-free methods of (composed - composed control), skills library."""
    def measure(results: list[Result]) -> list[float]:
        return per_seed(results, lambda r: max(value(r, template, f"{m}/skills") -
                                               value(r, template, f"{m}/skills", "control") for m in data_free([r])))
    measure.__name__ = f"beyond_control_{template}"
    return measure


def composes_near_ceiling(results: list[Result]) -> list[float]:
    """Per seed, same template: max over data-free methods of min(composed - control - MARGIN,
    CLOSE - (joint ceiling - composed)); above 0 iff some method beats its broadcast control by
    more than MARGIN AND comes within CLOSE of the joint-data LoRA. A ceiling that fails (joint
    near 0) cannot make this positive: composing beyond the control is needed too."""
    def one(r: Result) -> float:
        joint = value(r, "same", "joint/skills")
        return max(min(value(r, "same", f"{m}/skills") - value(r, "same", f"{m}/skills", "control") - MARGIN,
                       CLOSE - (joint - value(r, "same", f"{m}/skills"))) for m in data_free([r]))
    return per_seed(results, one)


def own_rows(r: Result, template: str, lora: str) -> float:
    """Exact match of one trained LoRA (an expert or ``joint/<library>``) on its own training rows."""
    return r.result["templates"][template]["experts"][lora]["final"]["facts"]


def _detail(template: str) -> Callable[[list[Result]], str]:
    def detail(results: list[Result]) -> str:
        mean = lambda f: sum(per_seed(results, f)) / max(1, len(results))  # noqa: E731
        best = mean(lambda r: max(value(r, template, f"{m}/skills") for m in data_free([r])))
        learnt = ", ".join(f"{n} {mean(lambda r, n=n: own_rows(r, template, n)):.2f}"
                           for n in ("facts", "procedure", "joint/skills"))
        return (f"{template} template: best data-free composed {best:.2f}, joint-data ceiling "
                f"{mean(lambda r: value(r, template, 'joint/skills')):.2f}, composed-expert LoRA "
                f"{mean(lambda r: value(r, template, 'single/composed')):.2f}, base "
                f"{mean(lambda r: value(r, template, 'base')):.2f}; LoRAs on their own rows: {learnt} "
                "(means over seeds)")
    return detail


def composed_questions(results: list[Result]) -> dict[str, int]:
    """Composed problems per template condition (the smallest over seeds)."""
    return {t: min(r.result["templates"][t]["n_composed"] for r in results) for t in results[0].result["templates"]}


def _base_detail(results: list[Result]) -> str:
    return "; ".join(f"seed {r.config.seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                           r.result["base"]["precondition"].items())
                     for r in sorted(results, key=lambda r: r.config.seed))


# A reuse verdict is read against the joint-data LoRA on the same experts' data (issue 12): when it
# answers fewer than half the composed questions, nothing that fine-tunes on this data composes
# either, and the claim is "not testable" here. 0.5 is a convention (half the composed questions).
CEILING = 0.5


def joint_ceiling(template: str) -> Ceiling:
    """The joint-data LoRA on the skills library's data: composed accuracy per seed."""
    return Ceiling(f"joint/skills composed accuracy ({template} template)",
                   lambda results: per_seed(results, lambda r: value(r, template, "joint/skills")), CEILING)


def _control_claim(template: str, direction: str, statement: str) -> ClaimMeasure:
    return ClaimMeasure(Claim(
        f"TEMPLATE-1-{template}", statement,
        f"max over data-free methods of (composed - composed-control rate), skills library, {template} template",
        direction, MARGIN, f"a convention: {MARGIN:g} is about 1.6 of the 16 composed problems"),
        beyond_control(template), ("math_reuse_methods",), _detail(template), bounds=DIFFERENCE,
        ceiling=joint_ceiling(template), questions=composed_questions)


def _claims() -> tuple[ClaimMeasure, ...]:
    return (
        ClaimMeasure(Claim(
            "MATH-0", "the base solves its own familiar problems: held-out problems with the facts stated and with "
            "familiar facts recalled (precondition of the reuse test)",
            "worse of context_test, memory_test exact match of the base", "above", SOLVES,
            f"a convention: {SOLVES:g} = the base solves 4 of 5 held-out problems of each skill"), base_solves,
            detail=_base_detail, bounds=ACCURACY),
        ClaimMeasure(Claim(
            "TEMPLATE-1-same", "with a shared solution template, a data-free merge or routing of the facts and "
            "procedure adapters answers composed problems beyond the broadcast control and close to the joint-data "
            "ceiling (a LoRA trained on the union of the skills data)",
            f"max over data-free methods of min(composed - control - {MARGIN:g}, {CLOSE:g} - (joint ceiling - "
            "composed)), skills library, same template", "above", 0.0,
            f"0 is where both conventions hold: composed exceeds its control by {MARGIN:g} (about 1.6 of the 16 "
            f"composed problems) and lies within {CLOSE:g} (about 3 of 16) of the joint-data ceiling"),
            composes_near_ceiling, ("math_reuse_methods",), _detail("same"), bounds=NEAR,
            ceiling=joint_ceiling("same"), questions=composed_questions),
        _control_claim("different", "below", "without a shared template (facts as atomic rows), no data-free merge "
                       "or routing answers composed problems beyond the broadcast control"),
    )


def summary(results: list[Result], out=None) -> None:
    """Per template: every model's composed accuracy, control, chain, conditional, specificity
    margin and facts retention, mean over seeds."""
    from analysis.tables import print_table

    if not results:
        return
    mean = lambda xs: None if not xs else sum(xs) / len(xs)  # noqa: E731
    base = results[0].result["base"]["precondition"]
    print(f"\nmath_reuse: base precondition (seed {results[0].config.seed}): "
          + ", ".join(f"{k} {v:.2f}" for k, v in base.items()), file=out)
    for template in results[0].result["templates"]:
        models = list(results[0].result["templates"][template]["models"])
        rows = []
        for name in models:
            ss = [r.result["templates"][template]["models"][name] for r in results]
            cond = [s["conditional"]["composed"] for s in ss if s["conditional"]["composed"] is not None]
            rows.append([name, mean([s["composed"] for s in ss]), mean([s["broadcast"]["composed"] for s in ss]),
                         mean([s.get("composed_chain", float("nan")) for s in ss]), mean(cond) if cond else "-",
                         mean([s["conditional"]["n"] for s in ss]), mean([s["specificity"]["margin"] for s in ss]),
                         mean([s["facts"].get("facts", float("nan")) for s in ss]),
                         mean([s["retention"].get("context_test", float("nan")) for s in ss])])
        print(f"template {template} ({len(results)} seeds, means):", file=out)
        print_table(["model", "composed", "control", "chain", "cond", "cond n", "spec margin", "facts kept",
                     "context kept"], rows, out=out, rule=True)


def _figures() -> dict:
    from analysis.figures import math_reuse as f

    return {"math_reuse_methods": f.methods_figure}


EXPERIMENT = register(Experiment(
    name="math_reuse",
    description="toy math word problems: facts + procedure LoRAs reused, same vs different solution template",
    grid=grid, run=run, figures=_figures(), claims=_claims(), summary=summary,
    # quick grid MEASURED (reproduce --profile quick --only math_reuse, --jobs 2, 3 seeds, load ~8 on 2
    # cores): 321 CPU s (user+sys), 11.5 min wall; over the 240 CPU s target, about 150 CPU s of it the
    # three 1,000-step bases (800 steps fail the precondition on seed 0: 0.76 / 0.83)
    reproduce_profiles=("quick", "paper"),
))
