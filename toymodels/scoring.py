"""Scores of one model on one familiarity split of the two-hop reuse experiment.

Every model (base, single expert, joint LoRA, merged or routed reuse) gets the same dict:

- ``composed``: exact match on the composed questions ``A_i r1 r2 ?``;
- ``facts[name]``: exact match on expert ``name``'s own facts (one-hop retention; AC's are
  the composed questions);
- ``broadcast[name]``: on control questions of expert ``name``'s template about other
  subjects, the share answered with one of that expert's NEW answers (T2: an edit that
  broadcasts looks like composition on the true prompts, so compare the two);
  ``broadcast["composed"]`` does this for the composed template ``X r1 r2 ?``;
- ``pretrain_atomic`` / ``pretrain_test_id``: what is left of the base model's knowledge
  and of its composition on held-out familiar chains.

Chance levels (:func:`chance_levels`) use the number of entity tokens as the answer space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from toymodels.adapters import Adapter
from toymodels.config import Config
from toymodels.reuse import METHODS
from toymodels.routing import set_oracle_weights
from toymodels.tasks.experts import ExpertSet, broadcast_rate
from toymodels.tasks.twohop import Pretraining
from toymodels.train import answer_loss, exact_match, greedy_final_answers

if TYPE_CHECKING:
    from toymodels.pipeline import BaseRun, PipelineConfig


@dataclass(frozen=True)
class ReuseOptions(Config):
    """Options of the reuse methods (``reuse.METHODS``). LoraHub's weight search sees the
    first ``lorahub_shots`` composed questions; its ``composed`` score excludes them."""

    svd_rank: int | None = None  # None: the experts' LoRA rank
    ties_density: float = 0.2
    dare_drop: float = 0.5
    arrow_top_k: int = 1
    arrow_temperature: float = 1.0
    lorahub_shots: int = 2
    lorahub_budget: int = 40

    def __post_init__(self):
        checks = {"svd_rank": self.svd_rank is None or self.svd_rank >= 1,
                  "ties_density": 0 < self.ties_density <= 1, "dare_drop": 0 <= self.dare_drop < 1,
                  "arrow_top_k": self.arrow_top_k >= 1, "arrow_temperature": self.arrow_temperature > 0,
                  "lorahub_shots": self.lorahub_shots >= 1, "lorahub_budget": self.lorahub_budget >= 1}
        allowed = {"svd_rank": ">= 1 or None", "ties_density": "in (0, 1]", "dare_drop": "in [0, 1)",
                   "arrow_temperature": "> 0"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"reuse.{name}={getattr(self, name)!r}: must be {allowed.get(name, '>= 1')}")


def chance_levels(pre: Pretraining, es: ExpertSet) -> dict:
    n_entities = pre.graph.n_entities + pre.graph.tokenizer.n_new
    return {"composed": 1.0 / n_entities,
            "broadcast": {name: len(c.new_answers) / n_entities for name, c in es.controls.items()}}


def _rate(model: nn.Module, es: ExpertSet, name: str) -> float:
    control = es.controls[name]
    return broadcast_rate(greedy_final_answers(model, control.questions), control)


def score_model(model: nn.Module, base: "BaseRun", es: ExpertSet, members: Sequence[str],
                composed_from: int = 0) -> dict:
    model.eval()
    broadcast = {name: _rate(model, es, name) for name in members if name != "AC"}
    broadcast["composed"] = _rate(model, es, "AC")
    evals = base.pretraining.eval_sets
    return {"composed": exact_match(model, es.composed[composed_from:]),
            "facts": {name: exact_match(model, es.facts_eval[name]) for name in members},
            "broadcast": broadcast,
            "pretrain_atomic": exact_match(model, evals["atomic"]),
            "pretrain_test_id": exact_match(model, evals["test_id"])}


def _oracle(model: nn.Module, base: "BaseRun", es: ExpertSet, members: Sequence[str]) -> dict:
    """Task-level oracle selection: on each eval set, the one adapter of the library that
    scores best there (one-hot routing weights); broadcast uses the adapter so chosen."""
    per = []
    for i in range(len(members)):
        set_oracle_weights(model, torch.nn.functional.one_hot(torch.tensor(i), len(members)).float())
        per.append(score_model(model, base, es, members))
    best = max(range(len(per)), key=lambda i: per[i]["composed"])
    out = dict(per[best], facts={n: max(p["facts"][n] for p in per) for n in members})
    out["broadcast"] = {n: per[members.index(n)]["broadcast"][n] for n in members if n != "AC"}
    out["broadcast"]["composed"] = per[best]["broadcast"]["composed"]
    out["composed_adapter"] = members[best]
    return out


def method_options(method: str, cfg: "PipelineConfig", n_adapters: int, gen: torch.Generator | None = None,
                   rng: np.random.Generator | None = None, loss_fn=None) -> dict:
    """The keyword options of ``METHODS[method]`` set by ``cfg.reuse`` (one place for every
    caller); ``dare`` needs ``gen``, ``lorahub`` needs ``rng`` and a few-shot ``loss_fn``."""
    opts = cfg.reuse
    if method.startswith("peft_"):  # PEFT's names: density = share kept, svd_rank defaults like ours
        kind = method.removeprefix("peft_")
        dare = {"density": 1.0 - opts.dare_drop, "generator": gen} if kind.startswith("dare") else {}
        prune = {"density": opts.ties_density} if kind.startswith(("ties", "magnitude")) else {}
        return {**dare, **prune, **({"svd_rank": opts.svd_rank or cfg.lora.rank} if kind.endswith("svd") else {})}
    return {
        "svd": {"rank": opts.svd_rank or cfg.lora.rank},
        "ties": {"density": opts.ties_density},
        "dare": {"drop_rate": opts.dare_drop, "generator": gen},
        "arrow": {"top_k": min(opts.arrow_top_k, n_adapters), "temperature": opts.arrow_temperature},
        "lorahub": {"loss_fn": loss_fn, "rng": rng, "budget": opts.lorahub_budget},
    }.get(method, {})


def score_method(method: str, base: "BaseRun", es: ExpertSet, members: Sequence[str],
                 adapters: Sequence[Adapter], cfg: "PipelineConfig", rng: np.random.Generator,
                 gen: torch.Generator) -> dict:
    """Build ``METHODS[method](base, adapters, **options)`` and score it."""
    opts = cfg.reuse
    shots = es.composed[:opts.lorahub_shots]

    def few_shot_loss(model: nn.Module) -> float:
        return answer_loss(model, shots.to(next(model.parameters()).device)).item()

    options = method_options(method, cfg, len(adapters), gen=gen, rng=rng, loss_fn=few_shot_loss)
    with torch.no_grad():
        model = METHODS[method](base.model, list(adapters), **options)
    if method == "oracle":
        return _oracle(model, base, es, list(members))
    skip = opts.lorahub_shots if method == "lorahub" else 0
    return dict(score_model(model, base, es, members, composed_from=skip), composed_rows=len(es.composed) - skip)
