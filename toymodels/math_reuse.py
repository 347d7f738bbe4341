"""The math reuse experiment end to end (issue 10 items 2 and 5; PAPER.md, TMLR task families), as
one call on the one protocol (:func:`toymodels.protocol.run_protocol`).

:func:`run_math_reuse` pretrains a toy GPT on the math corpus (:mod:`toymodels.tasks.math_corpus`)
or takes a given one, draws the expert set (:mod:`toymodels.tasks.math_experts`: ``facts``,
``procedure``, ``composed``, distractors ``D*``), and scores with :mod:`toymodels.span_family`
the base, every single expert, a joint-data LoRA per library and every reuse method on two
libraries (``MathReuseConfig.libraries`` picks which): ``skills`` = {facts, procedure, D*} (data-free
composition of the two skills) and ``with_composed`` = ``skills`` + the composed expert (trained on
the composed problems themselves). The composed expert is scored alone (``single/composed``) either way.

Conditional composition (``needs``): a composed problem counts when the model still answers
every row the facts expert was taught that holds one of the problem's facts (probe
``taught_facts``, in the facts expert's own template), and its *procedure twin*: the same
question type and constants about context entities, values stated in the text (probe
``procedure_twin``), i.e. the procedure skill for exactly this problem.

Randomness (:mod:`toymodels.seeds`, one run seed): the corpus ``("base", "corpus")``, the base's
init and batches (:func:`toymodels.span_family.train_span_base`), the expert set ``("experts",)``,
the twins ``("experts", "twins")`` and the protocol's LoRAs, merges and search ``("protocol",)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from toymodels import seeds
from toymodels.config import Config, check_fields
from toymodels.lora import LoRAConfig
from toymodels.model import ModelConfig, role_modules
from toymodels.progress import Progress, labelled
from toymodels.protocol import Backend, run_protocol, train_summary
from toymodels.reuse import METHODS
from toymodels.reuse_options import ReuseOptions
from toymodels.span_family import Needs, SpanBase, rows, span_family, train_span_base
from toymodels.tasks.knowledge import encode
from toymodels.tasks.math_corpus import MathPretraining, MathTaskConfig, make_math_pretraining
from toymodels.tasks.math_experts import MathExpertConfig, MathExpertSet, make_math_expert_set
from toymodels.tasks.math_formats import atomic_row, problem_row
from toymodels.tasks.math_problems import MathTokenizer, make_problem
from toymodels.train import TrainConfig, TrainResult, recipe, resolve_device

PRECONDITION_SETS = ("atomic", "context_test", "memory_test")  # the base's own skills, held out
LIBRARIES = ("skills", "with_composed")


def _math_lora() -> LoRAConfig:
    from toymodels.presets import math_lora  # imported when called: presets imports this module

    return math_lora()


@dataclass(frozen=True)
class MathReuseConfig(Config):
    """Base (task, model, train), experts, LoRA, fine-tune recipe, reuse methods and options, the
    libraries reused (of :data:`LIBRARIES`; module docstring); ``decode_extra``: greedy decoding
    may run this many tokens past a gold answer's length."""

    task: MathTaskConfig = field(default_factory=MathTaskConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256,
                                                                   d_vocab=128, n_ctx=64))
    train: TrainConfig = field(default_factory=TrainConfig)
    experts: MathExpertConfig = field(default_factory=MathExpertConfig)
    lora: LoRAConfig = field(default_factory=lambda: _math_lora())
    finetune: TrainConfig = field(default_factory=lambda: recipe("math_finetune"))
    methods: tuple[str, ...] = ("average", "sum", "ties", "arrow")
    reuse: ReuseOptions = field(default_factory=ReuseOptions)
    libraries: tuple[str, ...] = LIBRARIES
    decode_extra: int = 8

    @property
    def d_vocab(self) -> int:
        w = self.task.world
        return MathTokenizer(w.n_attributes, w.n_qtypes, w.n_new_qtypes, w.n_entities, w.n_context, w.n_new).d_vocab

    def __post_init__(self):
        if self.model.d_vocab < self.d_vocab:
            raise ValueError(f"model.d_vocab={self.model.d_vocab}: must be >= the task's vocabulary size {self.d_vocab}")
        if self.finetune.target_set not in (None, "facts"):
            raise ValueError(f"finetune.target_set={self.finetune.target_set!r}: must be None or 'facts'")
        check_fields("math_reuse", self, {
            "methods": (bool(self.methods) and all(m in METHODS for m in self.methods),
                        f"a non-empty tuple of {', '.join(METHODS)}"),
            "libraries": (bool(self.libraries) and len(set(self.libraries)) == len(self.libraries)
                          and all(lib in LIBRARIES for lib in self.libraries),
                          f"a non-empty tuple of distinct names of {', '.join(LIBRARIES)}"),
            "decode_extra": (isinstance(self.decode_extra, int) and self.decode_extra >= 0, "an integer >= 0")})


def make_corpus(cfg: MathReuseConfig, seed: int) -> MathPretraining:
    return make_math_pretraining(cfg.task, seeds.numpy_rng(seed, "base", "corpus"))


def train_math_base(cfg: MathReuseConfig, seed: int = 0, device: str = "auto",
                    progress: Progress | None = None) -> SpanBase:
    pre = make_corpus(cfg, seed)
    return SpanBase(pre, train_span_base(pre, cfg.model, cfg.train, seed, device, labelled(progress, "base model")))


def with_condition_probes(pre: MathPretraining, es: MathExpertSet, rng: np.random.Generator) -> tuple[MathExpertSet,
                                                                                                      Needs]:
    """``es`` with the probes ``taught_facts`` and ``procedure_twin`` added, and each composed
    problem's needs (module docstring)."""
    world, tok, fmt = pre.world, pre.world.tokenizer, pre.config.fmt
    taught = rows(es.facts_eval["facts"])
    if es.template == "same":
        holds = [{(e, a) for e, a, _ in p.facts} for p in es.problems["facts"]]
    else:  # atomic rows: BOS entity attribute -> value
        atomic = {(e, a): atomic_row(tok, int(e), a, 0)[0] for e in es.entities["facts"]
                  for a in range(world.config.n_attributes)}
        holds = [{(int(e), a) for (e, a), q in atomic.items() if q == question} for question, _ in taught]
    twins = []
    for p in es.problems["composed"]:
        ents = tuple(int(c) for c in rng.choice(world.context, len(p.entities), replace=False))
        twin = make_problem(world, p.qtype, ents, rng, True, pre.config.n_distractors, consts=p.consts)
        if twin is None:
            raise ValueError(f"no stated values make question type {p.qtype} with constants {p.consts} valid: "
                             f"raise world.max_value")
        twins.append(problem_row(tok, twin, fmt))
    needs = [[("taught_facts", k) for k, h in enumerate(holds) if h & {(e, a) for e, a, _ in p.facts}] +
             [("procedure_twin", i)] for i, p in enumerate(es.problems["composed"])]
    probes = es.probes | {"taught_facts": es.facts_eval["facts"], "procedure_twin": encode(twins)}
    return dataclasses.replace(es, probes=probes), needs


def libraries(es: MathExpertSet, names: tuple[str, ...] = LIBRARIES) -> dict[str, list[str]]:
    distractors = [n for n in es.experts if n.startswith("D")]
    every = {"skills": ["facts", "procedure"] + distractors, "with_composed": ["facts", "procedure", "composed"]
             + distractors}
    return {name: every[name] for name in names}


def chance_levels(pre: MathPretraining, es: MathExpertSet) -> dict:
    """A uniform guess over the answer range ``[0, max_value]``: composed, and per control the
    expected share of its rows whose guess is one of that row's new answers."""
    n = pre.world.config.max_value + 1
    return {"composed": 1.0 / n, "broadcast": {name: float(np.mean([len(s) for s in c.new_answers])) / n
                                               for name, c in es.controls.items()}}


def precondition(result: TrainResult) -> dict:
    """The base's exact match on its own held-out skills (atomic facts, problems with stated facts,
    held-out recalled-fact problems), final eval."""
    final = result.final()
    return {k: final[k] for k in PRECONDITION_SETS if k in final}


def run_math_reuse(cfg: MathReuseConfig, seed: int = 0, device: str = "auto", progress: Progress | None = None,
                   base: SpanBase | None = None, stacked: bool = True) -> dict:
    """Returns (JSON-able)::

        {"config", "key", "seed", "template", "n_composed", "chance",
         "base": {steps, seconds, reached_target, final, losses, "precondition": {set: accuracy}},
         "experts": {name | "joint/<library>": training summary},
         "models": {"base" | "single/<expert>" | "joint/<library>" | "<method>/<library>": scores}}

    ``stacked``: every LoRA trained in one stacked run (:func:`toymodels.protocol.run_protocol`),
    equal to sequential training up to float rounding and cheaper on a CPU.
    """
    resolve_device(device)
    base = base or train_math_base(cfg, seed, device, progress)
    pre = base.pretraining
    longest = max(pre.train.tokens.shape[1], *(e.tokens.shape[1] for e in pre.eval_sets.values()))
    if cfg.model.n_ctx < longest + cfg.decode_extra:
        raise ValueError(f"model.n_ctx={cfg.model.n_ctx}: must be >= the longest row ({longest}) + decode_extra "
                         f"({cfg.decode_extra})")
    es = make_math_expert_set(pre, cfg.experts, seeds.numpy_rng(seed, "experts"))
    es, needs = with_condition_probes(pre, es, seeds.numpy_rng(seed, "experts", "twins"))
    sep = pre.world.tokenizer.symbol("ANS") if pre.config.fmt == "worked" else None
    family = span_family(es, libraries(es, cfg.libraries), cfg.reuse, sep, needs, cfg.decode_extra)
    # scope ("math",) for both templates: the two conditions share LoRA inits and merge draws (paired)
    done = run_protocol(family, Backend(base.model, role_modules(base.model), device), cfg, seed, ("math",),
                        summary=lambda r: train_summary(r, curves=False), title="math experts and scores",
                        progress=progress, stacked=stacked)
    return {"config": cfg.to_dict(), "key": cfg.key(), "seed": seed, "template": es.template,
            "n_composed": len(es.composed), "chance": chance_levels(pre, es),
            "base": {**train_summary(base.result, curves=False), "precondition": precondition(base.result)}, **done}
