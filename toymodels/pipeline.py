"""The two-hop reuse experiment end to end (PAPER.md section 2), as one call.

:func:`run_two_hop` pretrains a base GPT on the two-hop corpus (:func:`train_base`), then
for each familiarity split (F / H / R) trains one LoRA per expert (AB, BC, AC, distractors)
and one joint LoRA per library on the union of its experts' data, and scores every model
(base, each single expert, each joint LoRA, every method of ``reuse.METHODS`` on each
library) with :func:`toymodels.scoring.score_model`; with ``joint_full_lr`` also a joint-data
FULL fine-tune per library (``joint_full/<library>``, the ceiling without LoRA's rank limit).
Two libraries are reused:
``hops`` = {AB, BC, distractors} (can disjoint one-hop adapters compose?) and ``with_AC`` =
{AB, BC, AC, distractors} (the paper finds the target-task expert necessary).

Seeds (``toymodels/seeds.py``): the run seed names every stream. The base model draws its
corpus from ``("base", "corpus")``, its init from ``("base", "init")`` and its batch order from
``("base", "train")``; split ``fam`` draws its expert data from ``("experts", fam)``, and the
protocol gives each LoRA and randomized merge of the split its own stream under the scope
``(fam,)`` (:func:`toymodels.protocol.run_protocol`). So a seed is an independent replication
(its own base model), and adding a split, expert or method changes no other draw.

The returned dict is JSON-able: numbers, strings, lists and dicts only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from toymodels import protocol
from toymodels.adapters import Adapter, extract_adapter
from toymodels.config import Config, opt_in
from toymodels.entity_rows import inject_rows, rows_in
from toymodels.lora import LoRAConfig, inject_lora
from toymodels.model import GPT, ModelConfig, role_modules
from toymodels.progress import Progress, labelled, open_bar
from toymodels.protocol import LIBRARIES, Backend, run_protocol, train_summary
from toymodels.reuse import DEFAULT_METHODS, METHODS
from toymodels.reuse_options import ReuseOptions
from toymodels.scoring import chance_levels, two_hop_family
from toymodels.seeds import numpy_rng, torch_gen
from toymodels.tasks import Examples
from toymodels.tasks.experts import FAMILIARITIES, SPLITS, ExpertConfig, ExpertSet, make_expert_set
from toymodels.tasks.twohop import Pretraining, TwoHopConfig, make_pretraining
from toymodels.train import TrainConfig, TrainResult, recipe, resolve_device, train

__all__ = ["LIBRARIES", "BaseConfig", "BaseRun", "PipelineConfig", "base_corpus", "run_two_hop", "train_base",
           "train_lora", "train_summary"]


@dataclass(frozen=True)
class BaseConfig(Config):
    """Task, model and training of the base model. ``model.d_vocab`` must cover the task's
    vocabulary and ``model.n_ctx`` its longest input (CoT rows: 7 tokens, 6 fed in)."""

    task: TwoHopConfig = field(default_factory=TwoHopConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model.d_vocab < self.task.graph.d_vocab:
            raise ValueError(f"model.d_vocab={self.model.d_vocab}: must be >= the task's vocabulary "
                             f"size graph.d_vocab={self.task.graph.d_vocab}")
        if self.model.n_ctx < 6:
            raise ValueError(f"model.n_ctx={self.model.n_ctx}: must be >= 6 (the longest input)")


@dataclass(frozen=True)
class PipelineConfig(Config):
    base: BaseConfig = field(default_factory=BaseConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    finetune: TrainConfig = field(default_factory=lambda: recipe("careful_finetune"))  # presets
    familiarities: tuple[str, ...] = FAMILIARITIES
    methods: tuple[str, ...] = DEFAULT_METHODS
    reuse: ReuseOptions = field(default_factory=ReuseOptions)
    # Opt-in knobs (toymodels/config.py: left out of the cache key at their defaults).
    # joint_full_lr: also fine-tune every base weight on each library's joint data at this lr
    # (presets.full_finetune().lr), scored as ``joint_full/<library>``; None: no full fine-tune.
    joint_full_lr: float | None = opt_in(None)
    # new_entity_rows: each LoRA also trains the embedding and unembedding rows of the new-entity
    # tokens in its data (split F's entities, H's subjects; toymodels/entity_rows.py); the row
    # deltas travel with the adapter and merge with it. False (default): those rows stay at
    # their random init, which no LoRA can move.
    new_entity_rows: bool = opt_in(False)

    def __post_init__(self):
        if bad := [f for f in self.familiarities if f not in SPLITS] or not self.familiarities:
            raise ValueError(f"familiarities={self.familiarities!r} (bad: {bad}): "
                             f"must be a non-empty subset of {', '.join(SPLITS)}")
        if "O" in self.familiarities and not self.base.task.ood_frac > 0:
            raise ValueError(f"familiarities contains 'O' but base.task.ood_frac={self.base.task.ood_frac}: "
                             "split O needs out-of-distribution entities, set ood_frac > 0")
        if bad := [m for m in self.methods if m not in METHODS]:
            raise ValueError(f"methods contains {bad}: must be among {', '.join(METHODS)}")
        if self.finetune.target_set not in (None, "facts"):
            raise ValueError(f"finetune.target_set={self.finetune.target_set!r}: must be None or 'facts'")
        if self.joint_full_lr is not None and not self.joint_full_lr > 0:
            raise ValueError(f"joint_full_lr={self.joint_full_lr!r}: must be > 0, or None for no full fine-tune")


@dataclass
class BaseRun:
    """A pretrained base model, its corpus and its training record."""

    model: GPT
    pretraining: Pretraining
    result: TrainResult


def base_corpus(cfg: BaseConfig, seed: int) -> Pretraining:
    """The base model's corpus for ``seed`` (stream ``("base", "corpus")``): deterministic, so a
    cached base model stores only its weights."""
    return make_pretraining(cfg.task, numpy_rng(seed, "base", "corpus"))


def train_base(cfg: BaseConfig, seed: int = 0, device: str = "auto", progress: Progress | None = None) -> BaseRun:
    """Generate the corpus and pretrain a GPT on it; eval sets: atomic, train_two_hop,
    test_id (held-out chains) and, with OOD entities, test_ood. ``progress``: a bar over
    the training steps (toymodels/progress.py)."""
    corpus = open_bar(progress, "base model: making the corpus", 1)
    pre = base_corpus(cfg, seed)
    corpus.close()
    model = GPT(cfg.model, generator=torch_gen(seed, "base", "init"))
    result = train(model, pre.train, cfg.train, torch_gen(seed, "base", "train"), pre.eval_sets, device,
                   labelled(progress, "base model"))
    return BaseRun(model.requires_grad_(False).eval(), pre, result)


def train_lora(base: nn.Module, data: Examples, cfg: PipelineConfig, gen: torch.Generator,
               device: str, progress: Progress | None = None) -> tuple[Adapter, TrainResult]:
    """Fine-tune a fresh LoRA on ``data`` until it reproduces ``data`` (eval set ``facts``)."""
    return protocol.train_lora(Backend(base, role_modules(base), device), data, cfg.lora, cfg.finetune, gen, progress)


def rows_trainer(new_tokens: range) -> Callable[..., tuple[Adapter, TrainResult]]:
    """A ``Backend.trainer`` (:func:`toymodels.protocol.train_lora`'s signature) that trains the
    LoRA together with the embedding / unembedding rows of the ``new_tokens`` in its data (none
    there: the LoRA alone), :mod:`toymodels.entity_rows`."""
    def trainer(backend: Backend, data: Examples, lora: LoRAConfig, finetune: TrainConfig, gen: torch.Generator,
                progress: Progress | None = None) -> tuple[Adapter, TrainResult]:
        model = inject_lora(backend.model, lora, backend.roles, gen)
        if len(tokens := rows_in(data.tokens, new_tokens)):
            inject_rows(model, tokens)
        result = train(model, data, finetune, gen, {"facts": data}, backend.device, progress)
        return extract_adapter(model, lora), result
    return trainer


def run_split(base: BaseRun, cfg: PipelineConfig, familiarity: str, seed: int, device: str,
              progress: Progress | None = None, stacked: bool = False) -> dict:
    """Experts, joint LoRAs and scores of every model for one familiarity split
    (:func:`toymodels.protocol.run_protocol`, seed scope ``(familiarity,)``). ``progress``
    gets a bar over its LoRAs and scored models and one per LoRA over its steps."""
    es: ExpertSet = make_expert_set(base.pretraining, cfg.experts, familiarity,
                                    numpy_rng(seed, "experts", familiarity))
    distractors = [name for name in es.experts if name.startswith("D")]
    libraries = {lib: list(names) + distractors for lib, names in LIBRARIES.items()}
    family = two_hop_family(base, es, libraries, cfg.reuse)
    trainer = rows_trainer(base.pretraining.graph.tokenizer.new_tokens) if cfg.new_entity_rows else None
    done = run_protocol(family, Backend(base.model, role_modules(base.model), device, trainer), cfg, seed,
                        (familiarity,), title=f"split {familiarity}", progress=progress, stacked=stacked,
                        joint_full_lr=cfg.joint_full_lr)
    return {"r1": es.r1, "r2": es.r2, "n_composed": len(es.composed), **done,
            "chance": chance_levels(base.pretraining, es)}


def run_two_hop(cfg: PipelineConfig, seed: int = 0, device: str = "auto", progress: Progress | None = None,
                base: BaseRun | None = None, stacked: bool = False) -> dict:
    """Pretrain (unless ``base`` is given; ``seed`` names every other stream either way), then
    run every familiarity split (``stacked``: each split's LoRAs in one stacked run, equal to
    sequential runs up to float rounding); ``progress``
    (toymodels/progress.py) sees every training run and each split's scoring. Returns::

        {"config", "key", "seed",
         "base": {steps, seconds, reached_target, final, eval_steps, curves, losses},
         "splits": {"F"|"H"|"R": {"r1", "r2", "n_composed", "chance",
                    "experts": {name: training summary},   # AB, BC, AC, D*, joint[_full]/<library>
                    "models": {"base" | "single/<expert>" | "joint/<library>" | "joint_full/<library>" |
                               "<method>/<library>": scoring.score_model dict}}}}
    """
    resolve_device(device)  # fail early on a bad name
    if stacked and cfg.new_entity_rows:
        raise ValueError("stacked=True with new_entity_rows=True: the stacked engine trains LoRA factors only; "
                         "run sequentially (stacked=False) or turn new_entity_rows off")
    base = base or train_base(cfg.base, seed, device, progress)
    return {
        "config": cfg.to_dict(), "key": cfg.key(), "seed": seed,
        "base": train_summary(base.result),
        "splits": {fam: run_split(base, cfg, fam, seed, device, progress, stacked) for fam in cfg.familiarities},
    }
