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
and shared, 3 seeds: 12 configs. ``paper`` (GPU): 64 control questions, 9 methods (every
family of ``reuse.METHODS``, LoraHub and the oracle included), 4 conditions, 5 seeds: 40.

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
from typing import Callable, Iterable

from analysis.experiments.two_hop_claims import claims
from analysis.experiments.two_hop_read import (DATA_FREE, FORMATS, by_seed, data_free, method_mean,  # noqa: F401
                                               model_value, select)  # (re-exported: figures, other experiments)
from analysis.registry import Experiment, register
from toymodels.config import Config
from toymodels.pipeline import PipelineConfig, run_two_hop
from toymodels.presets import quick_two_hop

# name -> (distractor experts, shared-template examples per expert)
CONDITIONS = {"main": (2, 0), "shared": (2, 4)}  # quick: the distractor contrast is paper-only (budget)
PAPER_CONDITIONS = {"main": (2, 0), "no_distractors": (0, 0), "shared": (2, 8), "shared_no_distractors": (0, 8)}
QUICK_METHODS = ("average", "sum", "ties", "arrow")
PAPER_METHODS = ("average", "sum", "ties", "dare", "svd", "factor_average", "arrow", "lorahub", "oracle")


@dataclass(frozen=True)
class TwoHopReuseConfig(Config):
    pipeline: PipelineConfig = field(default_factory=quick_two_hop)
    condition: str = "main"  # a label only; the knobs are pipeline.experts.*
    seed: int = 0  # expert data, LoRA init, randomized merges
    base_seed: int = 0  # the base model's corpus, init and batch order (the grids: = seed)

    @property
    def fmt(self) -> str:
        return self.pipeline.base.task.fmt


def make_grid(pipeline: Callable[[str], PipelineConfig], conditions: dict[str, tuple[int, int]],
              seeds: Iterable[int], methods: tuple[str, ...],
              formats: Iterable[str] = FORMATS) -> list[TwoHopReuseConfig]:
    """format x condition x seed, each seed on its own base model; ``pipeline(fmt)`` gives
    everything else."""
    out = []
    for fmt in formats:
        p = dataclasses.replace(pipeline(fmt), methods=methods)
        for name, (distractors, shared) in conditions.items():
            experts = dataclasses.replace(p.experts, n_distractors=distractors, shared_template=shared)
            out += [TwoHopReuseConfig(dataclasses.replace(p, experts=experts), name, s, base_seed=s)
                    for s in seeds]
    return out


def quick_pipeline(fmt: str) -> PipelineConfig:
    """:func:`presets.quick_two_hop` with 32 broadcast-control questions per expert (not 64)."""
    p = quick_two_hop(fmt)
    return dataclasses.replace(p, experts=dataclasses.replace(p.experts, n_control=32))


def grid(profile: str) -> list[TwoHopReuseConfig]:
    if profile == "quick":
        return make_grid(quick_pipeline, CONDITIONS, range(3), QUICK_METHODS)
    return make_grid(quick_two_hop, PAPER_CONDITIONS, range(5), PAPER_METHODS)


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
