"""``two_hop_reuse``: do merged or routed one-hop experts answer two-hop questions? (PAPER.md
section 2, "Two-hop reuse"; T2 for the broadcast control.)

Each grid point runs :func:`toymodels.pipeline.run_two_hop` on a cached base model: for
every familiarity split (F / H / R) it trains the experts AB, BC, AC and the distractors,
a joint LoRA per library, and scores the base model, every single expert, the joint LoRAs
and every reuse method on both libraries, ``hops`` = {AB, BC (+ distractors)} and
``with_AC`` = {AB, BC, AC (+ distractors)}. The grid crosses the answer format (latent,
chain-of-thought), a condition (``main``: 2 distractor experts; ``shared``: AB and BC data
also hold two-hop examples over other entities, the TMLR "shared template"; the paper
profile adds ``no_distractors`` and ``shared_no_distractors``)
and seeds. Scores: exact match on the composed questions and the broadcast control, the
share of questions "X r1 r2" about OTHER subjects answered with one of the new answers C
(T2: an edit that broadcasts looks like composition), with chance levels, and the issue-12
metrics (specificity, conditional composition, retention, log-probability and rank). The
claims and how they read the results: :mod:`analysis.experiments.two_hop_claims`.

Profiles. ``quick`` (2 CPU cores): ``presets.quick_two_hop`` (8 facts per expert, rank 4)
with 32 control questions per expert, methods average, sum, TIES and Arrow, conditions main
and shared, 3 seeds: 12 configs. ``paper``: 64 control questions, 9 methods (every
family of ``reuse.METHODS``, LoraHub and the oracle included), 4 conditions, 5 seeds: 40.
Measured on CPU (2026-12-03, 2 cores of the slower machine class, ``--jobs 2``, one torch
thread a worker): 47.2 min wall, 5,506 CPU-s, 0.9 GB peak RSS; a base model takes 392-407 s
(latent, 3,000 steps, none reaching the 95% early stop) or 29-44 s (CoT) on one core, a
config's reuse part ~2 min. Report: ``figures/paper/report.md``.

Seeds. Every seed is an independent replication: its own base model per format (``base_seed
= seed``; the conditions of one seed and format share it), expert data, LoRA inits and
randomized merges, each drawn from its own stream (``toymodels/seeds.py``), so CIs over seeds
include the base model. ``base_seed`` stays a config field: ``--set base_seed=0`` pins one
base model for every seed, explicitly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from analysis.experiments.two_hop_claims import claims
from analysis.experiments.two_hop_read import (DATA_FREE, FORMATS, by_seed, data_free, method_mean,  # noqa: F401
                                               model_value, select)  # (re-exported: figures, other experiments)
from analysis.registry import Experiment, Result, register
from toymodels.config import Config, opt_in
from toymodels.pipeline import PipelineConfig, run_two_hop
from toymodels.presets import (PAPER_METHODS, QUICK_METHODS, TWO_HOP_RECIPES, quick_large_two_hop, quick_two_hop,
                               with_recipe)

# name -> (distractor experts, shared-template examples per expert)
CONDITIONS = {"main": (2, 0), "shared": (2, 4)}  # quick: the distractor contrast is paper-only (budget)
PAPER_CONDITIONS = {"main": (2, 0), "no_distractors": (0, 0), "shared": (2, 8), "shared_no_distractors": (0, 8)}


@dataclass(frozen=True)
class TwoHopReuseConfig(Config):
    pipeline: PipelineConfig = field(default_factory=quick_two_hop)
    condition: str = "main"  # a label only; the knobs are pipeline.experts.*
    seed: int = 0  # expert data, LoRA init, randomized merges
    base_seed: int = 0  # the base model's corpus, init and batch order (the grids: = seed)
    # the fine-tune recipe's name (presets.TWO_HOP_RECIPES), a label like ``condition``: the
    # grid sets the knobs (pipeline.finetune, pipeline.lora) with presets.with_recipe
    recipe: str = opt_in("memorised")

    def __post_init__(self):
        # "memorised" labels whatever fine-tune the pipeline holds (the tests' tiny recipes too);
        # any other label must be what its knobs hold, so `--set recipe=X` cannot mislabel
        if self.recipe != "memorised" and with_recipe(self.pipeline, self.recipe) != self.pipeline:
            raise ValueError(f"recipe={self.recipe!r}: pipeline.finetune / pipeline.lora are not that recipe's "
                             "(presets.TWO_HOP_RECIPES); build the config with two_hop_reuse.make_grid(recipes=...) "
                             "or presets.with_recipe")

    @property
    def fmt(self) -> str:
        return self.pipeline.base.task.fmt


def make_grid(pipeline: Callable[[str], PipelineConfig], conditions: dict[str, tuple[int, int]],
              seeds: Iterable[int], methods: tuple[str, ...], formats: Iterable[str] = FORMATS,
              recipes: Sequence[str] = ("memorised",)) -> list[TwoHopReuseConfig]:
    """format x recipe x condition x seed, each seed on its own base model; ``pipeline(fmt)``
    gives everything else, each recipe of ``presets.TWO_HOP_RECIPES`` its fine-tune and LoRA
    (``memorised``, today's recipe, leaves ``pipeline(fmt)`` as it is)."""
    out = []
    seeds = list(seeds)
    for fmt in formats:
        for recipe in recipes:
            p = dataclasses.replace(pipeline(fmt), methods=methods)
            p = p if recipe == "memorised" else with_recipe(p, recipe)
            for name, (distractors, shared) in conditions.items():
                experts = dataclasses.replace(p.experts, n_distractors=distractors, shared_template=shared)
                out += [TwoHopReuseConfig(dataclasses.replace(p, experts=experts), name, s, base_seed=s,
                                          recipe=recipe) for s in seeds]
    return out


def quick_pipeline(fmt: str) -> PipelineConfig:
    """:func:`presets.quick_two_hop` with 32 broadcast-control questions per expert (not 64)."""
    p = quick_two_hop(fmt)
    return dataclasses.replace(p, experts=dataclasses.replace(p.experts, n_control=32))


def large_grid(seeds: Iterable[int] = range(3), methods: tuple[str, ...] = QUICK_METHODS,
               recipes: Sequence[str] = tuple(TWO_HOP_RECIPES)) -> list[TwoHopReuseConfig]:
    """The opt-in ``quick_large`` grid (issue 12 items 3 and 5): ``presets.quick_large_two_hop``
    (32 composed questions per split and seed, splits F/H/R/O, the joint full fine-tune
    ceiling), every recipe of ``recipes`` on the ``main`` condition and today's recipe alone on
    ``shared`` (REUSE-4 compares them within one recipe): per format, (len(recipes) + 1) x seeds."""
    seeds = list(seeds)
    return [c for fmt in FORMATS
            for c in make_grid(quick_large_two_hop, {"main": CONDITIONS["main"]}, seeds, methods, (fmt,), recipes)
            + make_grid(quick_large_two_hop, {"shared": CONDITIONS["shared"]}, seeds, methods, (fmt,))]


def grid(profile: str) -> list[TwoHopReuseConfig]:
    """``quick`` and ``paper`` (the registry's profiles) as committed; ``quick_large`` (not a
    registry profile yet: ``grid("quick_large")`` from Python) is :func:`large_grid`."""
    if profile == "quick":
        return make_grid(quick_pipeline, CONDITIONS, range(3), QUICK_METHODS)
    if profile == "quick_large":
        return large_grid()
    return make_grid(quick_two_hop, PAPER_CONDITIONS, range(5), PAPER_METHODS)


def recipe_name(r: Result) -> str:
    """The fine-tune recipe of a result (``ClaimMeasure.recipe``; ``memorised`` in the grids
    without a recipe axis)."""
    return r.config.recipe


def _scores(split: dict) -> dict:
    keep = ("composed", "composed_chain", "composed_logprob", "composed_rank", "specificity", "conditional",
            "facts", "broadcast", "pretrain_atomic", "pretrain_test_id", "pretrain_test_ood")
    return {"r1": split["r1"], "r2": split["r2"], "n_composed": split["n_composed"], "chance": split["chance"],
            "experts": {n: {k: e[k] for k in ("steps", "reached_target", "final")}
                        for n, e in split["experts"].items()},
            "models": {n: {k: s[k] for k in keep if k in s} for n, s in split["models"].items()}}


def run(config: TwoHopReuseConfig, device: str, results: Path | str) -> dict:
    from analysis.experiments import base_model
    from analysis.progress import current

    base = base_model(config.pipeline.base, config.base_seed, device, results)
    out = run_two_hop(config.pipeline, config.seed, device, progress=current(), base=base)
    b = out["base"]
    return {"fmt": config.fmt, "condition": config.condition, "seed": config.seed, "base_seed": config.base_seed,
            "base": {k: b[k] for k in ("steps", "seconds", "reached_target", "final")},
            "splits": {fam: _scores(split) for fam, split in out["splits"].items()}}


def _figures() -> dict:
    from analysis.figures import two_hop as f

    from analysis.figures import two_hop_metrics as g

    return {"two_hop_methods": f.methods_figure, "two_hop_libraries": f.libraries_figure,
            "two_hop_templates": f.templates_figure, "two_hop_retention": g.retention_figure,
            "two_hop_conditional": g.conditional_figure, "two_hop_specificity": g.specificity_figure,
            "two_hop_ood": g.ood_figure}


EXPERIMENT = register(Experiment(
    name="two_hop_reuse",
    description="merged / routed one-hop LoRA experts on two-hop questions, with broadcast controls",
    grid=grid, run=run, figures=_figures(), claims=claims(),
))
