"""``rank_depth``: LoRA rank x model depth (PAPER.md section 2, "Ablations over rank and depth").

Each grid point (rank r, depth L, seed) uses the base model of its (L, seed), trained once
and shared through :func:`analysis.experiments.base_model`, and measures:

1. Capacity (RANK-1): one rank-r LoRA on the last block's ``mlp_out`` learns N
   counterfactual edits; the facts it recalls are compared with RANK-1's exact-storage line
   ``min(r, N)`` and with the Eckart-Young truncation of the required changes
   (:mod:`toymodels.capacity`, whose docstring says why argmax recall is NOT bounded by r).
2. Reuse: :func:`toymodels.pipeline.run_two_hop` with rank-r LoRAs (every role, every layer)
   on a restricted set of familiarities and methods: composed accuracy of the ``hops``
   library {AB, BC} and the ``with_AC`` library {AB, BC, AC}, merged (``average``) or routed
   (``arrow``), beside the joint LoRA, and the base model's own held-out two-hop accuracy at
   that depth (reported whatever it is: a shallow base may not compose).

Profiles:
- ``quick`` (CPU): depths 1, 2, 4; ranks 1..64; 2 seeds; familiarities F, R; 8 facts per
  expert, no distractor; methods average and arrow (+ the joint LoRA). The base is
  SMALLER than ``presets.quick_base`` (64 entities, 4 relations, d_model 64) and uses the
  chain-of-thought format: latent two-hop composition does not emerge in a base this
  budget affords (measured: 40 entities, 4 relations, 1500 steps: 7% / 14% on held-out
  chains at depth 2 / 4), while CoT composes within ~200 steps at every depth. Quick
  results therefore speak about the CoT format only.
- ``paper`` (GPU): depths 1, 2, 4, 8; ranks 1..64; 5 seeds; F, H, R; the latent format on
  ``presets.quick_base`` at each depth; 2 distractor experts; methods average, ties, svd, arrow.
  On 2 CPU cores of the slower machine class (``--jobs 2``, 2026-12-03): 140 configs in 127 min
  wall. There the depth-1 bases compose 0.11 of held-out chains (RD-0 not supported) and the
  joint-data LoRA at most 0.13 (hops) / 0.40 (both libraries), so RD-4 and RD-5 read not
  testable (``figures/paper/report.md``).
Ranks above ``d_model`` (the smallest dimension of the adapted matrices) are dropped.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.experiments import base_model
from analysis.experiments.two_hop_claims import CEILING
from analysis.figures.rank_depth import accuracy_figure, capacity_figure
from analysis.progress import current
from analysis.registry import Ceiling, ClaimMeasure, Experiment, Result, register
from analysis.stats import ACCURACY, DIFFERENCE
from analysis.verdict import Claim
from toymodels.capacity import CapacityConfig, measure_capacity
from toymodels.config import Config
from toymodels.lora import LoRAConfig
from toymodels.model import ModelConfig
from toymodels.pipeline import LIBRARIES, BaseConfig, PipelineConfig, run_two_hop
from toymodels.progress import open_bar
from toymodels import presets
from toymodels.presets import quick_base
from toymodels.seeds import generators
from toymodels.tasks.experts import ExpertConfig
from toymodels.tasks.knowledge import GraphConfig
from toymodels.tasks.twohop import TwoHopConfig
from toymodels.train import TrainConfig

RANKS = (1, 2, 4, 8, 16, 32, 64)
DEPTHS = {"quick": (1, 2, 4), "paper": (1, 2, 4, 8)}
SEEDS = {"quick": (0, 1), "paper": (0, 1, 2, 3, 4)}
METHODS = {"quick": ("average", "arrow"), "paper": ("average", "ties", "svd", "arrow")}
FAMILIARITIES = {"quick": ("F", "R"), "paper": ("F", "H", "R")}


@dataclass(frozen=True)
class RankDepthConfig(Config):
    """One grid point: ``pipeline.lora.rank`` is r (capacity uses the same rank),
    ``pipeline.base.model.n_layers`` is L."""

    pipeline: PipelineConfig
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    seed: int = 0

    def __post_init__(self):
        model = self.pipeline.base.model
        if self.rank > model.d_model:
            raise ValueError(f"pipeline.lora.rank={self.rank}: must be <= model.d_model={model.d_model} "
                             "(the smallest dimension of the adapted matrices)")
        if self.capacity.n_facts > model.d_mlp:
            raise ValueError(f"capacity.n_facts={self.capacity.n_facts}: must be <= model.d_mlp={model.d_mlp} "
                             "(RANK-1 needs linearly independent keys)")

    @property
    def rank(self) -> int:
        return self.pipeline.lora.rank

    @property
    def depth(self) -> int:
        return self.pipeline.base.model.n_layers


def sweep_base(depth: int, profile: str) -> BaseConfig:
    """The base model of the sweep at ``depth`` (module docstring)."""
    if profile == "paper":
        base = quick_base("latent")
        return dataclasses.replace(base, model=dataclasses.replace(base.model, n_layers=depth))
    graph = GraphConfig(n_entities=64, n_relations=4, n_new=24)
    return BaseConfig(task=TwoHopConfig(graph=graph, fmt="cot", n_eval=256),
                      model=ModelConfig(n_layers=depth, d_model=64, n_heads=4, d_mlp=256, d_vocab=graph.d_vocab,
                                        n_ctx=8),
                      train=TrainConfig(steps=400, batch_size=256, lr=3e-3, weight_decay=1.0, warmup_steps=20,
                                        eval_every=50, target_acc=0.98, target_set="val_id"))


def point(base: BaseConfig, rank: int, seed: int, profile: str) -> RankDepthConfig:
    """The grid point at (``rank``, ``base``'s depth, ``seed``). LoRAs are rank-stabilised
    (rsLoRA, scale ``4 / sqrt(r)``: 2 at r = 4 as in the presets): with a fixed ``alpha / r``
    a first quick run saw high-rank fine-tunes collapse (F split, joint LoRA, depth 4)."""
    experts = ExpertConfig(n_facts=8, n_distractors=0 if profile == "quick" else 2)
    pipeline = PipelineConfig(base=base, experts=experts, finetune=presets.fast_finetune(),
                              lora=LoRAConfig(rank=rank, alpha=4.0, rslora=True),
                              familiarities=FAMILIARITIES[profile], methods=METHODS[profile])
    return RankDepthConfig(pipeline=pipeline, capacity=CapacityConfig(n_facts=64), seed=seed)


def grid(profile: str) -> list[RankDepthConfig]:
    bases = {L: sweep_base(L, profile) for L in DEPTHS[profile]}
    return [point(base, r, s, profile) for L, base in bases.items() for r in RANKS
            if r <= base.model.d_model for s in SEEDS[profile]]


def _scores(split: dict) -> dict:
    """The numbers the figures and claims use from one familiarity split."""
    keep = ("composed", "facts", "broadcast")
    return {"n_composed": split["n_composed"], "chance": split["chance"]["composed"],
            "models": {name: {k: s[k] for k in keep} for name, s in split["models"].items()}}


def run(config: RankDepthConfig, device: str, results: Path | str) -> dict:
    base = base_model(config.pipeline.base, config.seed, device, results)
    rng, gen = generators(config.seed, "capacity")
    bar = open_bar(current(), "capacity: one LoRA on N facts (RANK-1)", 1)
    capacity = measure_capacity(base.model, base.pretraining, config.capacity, config.rank, rng, gen, device)
    bar.close()
    reuse = run_two_hop(config.pipeline, config.seed, device, progress=current(), base=base)
    final = base.result.final()
    return {"rank": config.rank, "depth": config.depth, "seed": config.seed, "fmt": config.pipeline.base.task.fmt,
            "base": {"test_id": final["test_id"], "atomic": final["atomic"], "steps": base.result.steps,
                     "reached_target": base.result.reached_target},
            "capacity": capacity,
            "reuse": {fam: _scores(split) for fam, split in reuse["splits"].items()}}


# --- claims: one number per seed, computed from the results --------------------------

def by_seed(results: list[Result]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in results:
        out.setdefault(r.result["seed"], []).append(r.result)
    return dict(sorted(out.items()))


def _per_depth(rows: list[dict]) -> dict[int, dict[int, dict]]:
    """``depth -> rank -> result`` for one seed."""
    out: dict[int, dict[int, dict]] = {}
    for row in rows:
        out.setdefault(row["depth"], {})[row["rank"]] = row
    return out


def base_composes(results: list[Result]) -> list[float]:
    """Per seed: the base model's held-out two-hop accuracy at its weakest depth."""
    return [min(row["base"]["test_id"] for row in rows) for rows in by_seed(results).values()]


def capacity_growth(results: list[Result]) -> list[float]:
    """Per seed, mean over depths: (facts recalled at the largest rank - at the smallest) / N."""
    values = []
    for rows in by_seed(results).values():
        gains = [(d[max(d)]["capacity"]["recalled_trained"] - d[min(d)]["capacity"]["recalled_trained"])
                 / d[min(d)]["capacity"]["n_facts"] for d in _per_depth(rows).values()]
        values.append(float(np.mean(gains)))
    return values


def excess_over_bound(results: list[Result]) -> list[float]:
    """Per seed: the largest (facts recalled - min(r, N)) / N over ranks and depths."""
    return [max((row["capacity"]["recalled_trained"] - row["capacity"]["bound"]) / row["capacity"]["n_facts"]
                for row in rows) for rows in by_seed(results).values()]


def recall_by_rank(results: list[Result]) -> str:
    """The facts behind :func:`excess_over_bound`: per rank, the range over depths of the
    trained adapter's recall (mean over seeds), beside ``min(r, N)``."""
    cells: dict[int, dict[int, list[int]]] = {}
    for r in results:
        c = r.result["capacity"]
        cells.setdefault(r.result["rank"], {}).setdefault(r.result["depth"], []).append(c["recalled_trained"])
    n = results[0].result["capacity"]["n_facts"]
    parts = []
    for rank, depths in sorted(cells.items()):
        means = [float(np.mean(v)) for v in depths.values()]
        low, high = min(means), max(means)
        span = f"{low:g}" if low == high else f"{low:g}-{high:g}"
        parts.append(f"r = {rank}: {span} (min(r, N) = {min(rank, n)})")
    return (f"facts recalled of N = {n} by the trained rank-r adapter, range over depths of the mean over seeds: "
            + "; ".join(parts))


def construction_gap(results: list[Result]) -> list[float]:
    """Per seed: mean over ranks and depths of |recalled (trained) - recalled (EY construction)| / N."""
    return [float(np.mean([abs(c["recalled_trained"] - c["recalled_construction"]) / c["n_facts"]
                           for c in (row["capacity"] for row in rows)])) for rows in by_seed(results).values()]


def _reuse_acc(row: dict, library: str) -> float:
    """Best merged/routed composed accuracy of ``library`` at this point, mean over familiarities."""
    splits = row["reuse"].values()
    methods = {name.split("/")[0] for s in splits for name in s["models"]
               if name.endswith(f"/{library}") and not name.startswith("joint/")}
    return max(float(np.mean([s["models"][f"{m}/{library}"]["composed"] for s in splits])) for m in methods)


def _joint_acc(row: dict, library: str) -> float:
    """The joint-data LoRA of ``library`` at this point: composed accuracy, mean over familiarities."""
    return float(np.mean([s["models"][f"joint/{library}"]["composed"] for s in row["reuse"].values()]))


def joint_ceiling(libraries: tuple[str, ...]) -> Ceiling:
    """RD-4's and RD-5's ceiling, REUSE-1's rule (``two_hop_claims.CEILING``): per seed, the best
    joint-data LoRA over ranks and depths (composed accuracy, mean over familiarities and
    ``libraries``); under the threshold at every rank and depth, "reuse fails at every rank" is
    a floor effect, "not testable"."""
    def per_seed(results: list[Result]) -> list[float]:
        return [max(float(np.mean([_joint_acc(row, lib) for lib in libraries])) for row in rows)
                for rows in by_seed(results).values()]
    return Ceiling(f"joint/{'+'.join(libraries)} composed accuracy (best rank and depth, mean over familiarities)",
                   per_seed, CEILING)


def best_hops_reuse(results: list[Result]) -> list[float]:
    """Per seed: the highest composed accuracy of the merged/routed {AB, BC} library over all
    ranks and depths (best method, mean over familiarities)."""
    return [max(_reuse_acc(row, "hops") for row in rows) for rows in by_seed(results).values()]


def reuse_rank_gain(results: list[Result]) -> list[float]:
    """Per seed, mean over depths and libraries: best reuse composed accuracy at the largest
    rank minus at the smallest."""
    values = []
    for rows in by_seed(results).values():
        gains = [_reuse_acc(d[max(d)], lib) - _reuse_acc(d[min(d)], lib)
                 for d in _per_depth(rows).values() for lib in LIBRARIES]
        values.append(float(np.mean(gains)))
    return values


def capacity_edits(results: list[Result]) -> dict[str, int]:
    """The report's "questions per split" of the capacity claims: the edits on one matrix."""
    return {"edits on one matrix": max(r.result["capacity"]["n_facts"] for r in results)}


def reuse_questions(results: list[Result]) -> dict[str, int]:
    """Composed questions per familiarity split of the reuse claims (the smallest over results)."""
    counts: dict[str, int] = {}
    for r in results:
        for fam, split in r.result["reuse"].items():
            counts[fam] = min(counts.get(fam, split["n_composed"]), split["n_composed"])
    return counts


def _claims() -> tuple[ClaimMeasure, ...]:
    cap, acc = ("rank_depth_capacity",), ("rank_depth_accuracy",)
    return (
        ClaimMeasure(Claim("RD-0", "the base model composes at every depth (held-out two-hop chains of familiar "
                           "entities; the precondition of the reuse test)",
                           "min over depths of the base's held-out two-hop exact match", "above", 0.9,
                           "0.9 is the bar the presets' base recipes were built to clear (presets.quick_base: "
                           ">= 90% exact match on held-out chains), a convention for 'composes'"),
                     base_composes, acc, bounds=ACCURACY),
        ClaimMeasure(Claim("RD-1", "single-adapter capacity on one matrix grows with LoRA rank",
                           "(facts recalled at max rank - at rank 1) / N, mean over depths", "above", 0.1,
                           "a convention: 0.1 of N is 6.4 of the 64 edits more at the largest rank than at rank 1, "
                           "several times the metric's resolution of one edit (1/64)"),
                     capacity_growth, cap, bounds=DIFFERENCE, questions=capacity_edits),
        ClaimMeasure(Claim("RD-2", "a rank-r adapter on one matrix recalls at most min(r, N) facts "
                           "(RANK-1's exact-storage line read as an argmax-recall bound)",
                           "max over ranks, depths of (facts recalled - min(r, N)) / N", "below", 0.05,
                           "a convention: 0.05 of N is about 3 of the 64 edits above the line min(r, N), room for "
                           "a few stray recalls before the bound counts as broken"),
                     excess_over_bound, cap, detail=recall_by_rank, bounds=DIFFERENCE, questions=capacity_edits),
        ClaimMeasure(Claim("RD-3", "the Eckart-Young truncation of the required changes predicts how many "
                           "facts the trained rank-r adapter recalls (within 10% of N)",
                           "mean over ranks, depths of |recalled (trained) - recalled (EY)| / N", "below", 0.1,
                           "the claim's own tolerance, a convention: 0.1 of N is 6.4 of the 64 edits, against a "
                           "metric that resolves single edits (1/64)"),
                     construction_gap, cap, bounds=ACCURACY, questions=capacity_edits),
        ClaimMeasure(Claim("RD-4", "merging or routing the {AB, BC} library does not reach composition at "
                           "any rank or depth (fewer than half the composed questions answered)",
                           "max over ranks, depths of the best method's composed accuracy (hops library, "
                           "mean over familiarities)", "below", 0.5,
                           "0.5 is the claim's convention for reaching composition: half the composed questions, "
                           "midway between none and the base model's own >= 0.9 on held-out chains"),
                     best_hops_reuse, acc, bounds=ACCURACY, ceiling=joint_ceiling(("hops",)),
                     questions=reuse_questions),
        ClaimMeasure(Claim("RD-5", "rank is not the bottleneck of reuse: raising the rank from the smallest "
                           "to the largest adds less than 0.1 composed accuracy",
                           "best reuse composed accuracy at max rank - at rank 1, mean over depths and "
                           "libraries", "below", 0.1,
                           "a convention: 0.1 is just under one composed question of a split's 8 (0.125); a rank "
                           "gain smaller than that, averaged over depths and libraries, does not count"),
                     reuse_rank_gain, acc, bounds=DIFFERENCE, ceiling=joint_ceiling(tuple(LIBRARIES)),
                     questions=reuse_questions),
    )


EXPERIMENT = register(Experiment(
    name="rank_depth",
    description="LoRA rank x depth: single-adapter capacity vs RANK-1, and two-hop reuse accuracy",
    grid=grid,
    run=run,
    figures={"rank_depth_capacity": capacity_figure, "rank_depth_accuracy": accuracy_figure},
    claims=_claims(),
))
