"""The two-hop reuse protocol on a pretrained causal LM, in natural language (PAPER.md
section 2, "Full-scale runs"; data from :mod:`toymodels.tasks.natural`).

:func:`run_pretrained_two_hop` takes a loaded Llama-style HF model and its tokenizer
(``toymodels.pretrained.load_causal_lm``), then
1. measures the base model's familiarity: exact match on the one-hop facts of
   ``natural.WORLD`` (what R assumes the model knows);
2. trains one LoRA per expert (AB, BC, AC) with :func:`toymodels.train.train`, and one joint
   LoRA per library on the union of its experts' sentences (what data access would buy);
3. scores every model (base, single experts, joint LoRAs, each ``reuse.METHODS`` entry on
   each library ``hops`` = {AB, BC} and ``with_AC`` = {AB, BC, AC}) on every eval set of
   every familiarity F / H / R: exact match and mean answer log-probability.

``oracle`` is task-level oracle selection: per eval set, the best single adapter of the
library (one-hot routing). The result is JSON-able.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from toymodels.adapters import Adapter, extract_adapter
from toymodels.config import Config
from toymodels.lora import LoRAConfig, inject_lora
from toymodels.pretrained import LogitsLM, llama_role_map
from toymodels.reuse import METHODS
from toymodels.routing import set_oracle_weights
from toymodels.scoring import ReuseOptions
from toymodels.tasks import Examples
from toymodels.tasks.natural import (NaturalConfig, answer_scores, encode_pairs, eval_pairs, expert_pairs,
                                     known_fact_pairs, make_chains)
from toymodels.train import TrainConfig, TrainResult, answer_loss, train

LIBRARIES = {"hops": ("AB", "BC"), "with_AC": ("AB", "BC", "AC")}


@dataclass(frozen=True)
class PretrainedTwoHopConfig(Config):
    task: NaturalConfig = field(default_factory=NaturalConfig)
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "up", "down")))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=60, batch_size=16, lr=3e-3, weight_decay=0.0, warmup_steps=3, eval_every=5,
        target_acc=1.0, target_set="facts"))
    methods: tuple[str, ...] = tuple(METHODS)
    reuse: ReuseOptions = field(default_factory=lambda: ReuseOptions(lorahub_budget=12))
    joint: bool = True  # also train a joint LoRA per library
    familiarity_facts: int | None = None  # countries of WORLD for the base familiarity (None: all)

    def __post_init__(self):
        if bad := [m for m in self.methods if m not in METHODS]:
            raise ValueError(f"methods contains {bad}: must be among {', '.join(METHODS)}")
        if self.finetune.target_set not in (None, "facts"):
            raise ValueError(f"finetune.target_set={self.finetune.target_set!r}: must be None or 'facts'")


def quick() -> PretrainedTwoHopConfig:
    """< 30 min on 2 CPU cores with SmolLM2-135M: 2 countries x 2 cities per familiarity,
    capital only (AB 12, BC 6, AC 6 sentences), at most 25 steps per LoRA."""
    return PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=2, cities_per_country=2, relations2=("capital",)),
        finetune=dataclasses.replace(PretrainedTwoHopConfig().finetune, steps=25),
        methods=("average", "sum", "ties", "svd", "factor_average", "arrow", "oracle"))


def paper() -> PretrainedTwoHopConfig:
    """For a GPU: 8 countries x 3 cities, capital and language, every method, 300 steps."""
    return PretrainedTwoHopConfig(
        task=NaturalConfig(n_countries=8, cities_per_country=3),
        lora=LoRAConfig(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down")),
        finetune=dataclasses.replace(PretrainedTwoHopConfig().finetune, steps=300, batch_size=32, eval_every=10),
        reuse=ReuseOptions(lorahub_budget=40))


def score(model: nn.Module, sets: dict[str, Examples]) -> dict[str, dict[str, float]]:
    """``{set: {"exact": share exactly right, "logprob": mean answer log-probability}}``."""
    model.eval()
    out = {}
    for name, ex in sets.items():
        exact, logprob = answer_scores(model, ex)
        out[name] = {"exact": exact.float().mean().item(), "logprob": logprob.mean().item()}
    return out


def _oracle_score(model: nn.Module, n: int, sets: dict[str, Examples]) -> dict:
    per = []
    for i in range(n):
        set_oracle_weights(model, nn.functional.one_hot(torch.tensor(i), n).float())
        per.append(score(model, sets))
    best = {name: max(range(n), key=lambda i: per[i][name]["exact"]) for name in sets}
    return {name: dict(per[best[name]][name], adapter=best[name]) for name in sets}


def _train_lora(lm: nn.Module, roles, data: Examples, cfg: PretrainedTwoHopConfig, gen: torch.Generator,
                device: str, progress: bool) -> tuple[Adapter, TrainResult]:
    model = inject_lora(lm, cfg.lora, roles, gen)
    result = train(model, data, cfg.finetune, gen, {"facts": data}, device, progress)
    return extract_adapter(model, cfg.lora), result


def _summary(result: TrainResult) -> dict:
    return {"steps": result.steps, "seconds": round(result.seconds, 2), "final": result.final(),
            "losses": result.losses, "reached_target": result.reached_target}


def run_pretrained_two_hop(cfg: PretrainedTwoHopConfig, hf_model: nn.Module, tokenizer, seed: int = 0,
                           device: str = "cpu", progress: bool = False) -> dict:
    """The whole protocol on ``hf_model`` (its weights are left unchanged; it is moved to
    ``device``); see the module docstring."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    lm, roles = LogitsLM(hf_model).to(device), llama_role_map(hf_model)
    chains = make_chains(cfg.task, rng)
    sets = {name: encode_pairs(pairs, tokenizer) for name, pairs in eval_pairs(chains).items()}
    train_sets = {name: encode_pairs(pairs, tokenizer) for name, pairs in expert_pairs(chains).items()}
    familiar = encode_pairs(known_fact_pairs(cfg.familiarity_facts), tokenizer)
    out = {"config": cfg.to_dict(), "key": cfg.key(), "seed": seed,
           "chains": [dataclasses.asdict(c) for c in chains],
           "familiarity": {"facts": len(familiar),
                           "exact": answer_scores(lm.eval(), familiar)[0].float().mean().item()},
           "experts": {}, "models": {"base": score(lm, sets)}}
    adapters = {}
    for name, data in train_sets.items():
        adapters[name], result = _train_lora(lm, roles, data, cfg, gen, device, progress)
        out["experts"][name] = _summary(result)
        out["models"][f"single/{name}"] = score(result.model, sets)
        del result
    opts = cfg.reuse
    for lib, members in LIBRARIES.items():
        if cfg.joint:
            joint = Examples.cat([train_sets[m] for m in members])
            _, result = _train_lora(lm, roles, joint, cfg, gen, device, progress)
            out["experts"][f"joint/{lib}"] = _summary(result)
            out["models"][f"joint/{lib}"] = score(result.model, sets)
            del result
        bank = [adapters[m] for m in members]
        shots = train_sets["AC"][:opts.lorahub_shots]  # LoraHub sees a few two-hop sentences

        def few_shot_loss(model: nn.Module) -> float:
            return answer_loss(model, shots.to(next(model.parameters()).device)).item()

        for method in cfg.methods:
            options = {"svd": {"rank": opts.svd_rank or cfg.lora.rank}, "ties": {"density": opts.ties_density},
                       "dare": {"drop_rate": opts.dare_drop, "generator": gen},
                       "arrow": {"top_k": min(opts.arrow_top_k, len(bank)), "temperature": opts.arrow_temperature},
                       "lorahub": {"loss_fn": few_shot_loss, "rng": rng, "budget": opts.lorahub_budget},
                       }.get(method, {})
            with torch.no_grad():
                model = METHODS[method](lm, bank, **options)
            out["models"][f"{method}/{lib}"] = (_oracle_score(model, len(bank), sets) if method == "oracle"
                                                else score(model, sets))
            del model
    return out
